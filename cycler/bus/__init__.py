"""The bus: the MQTT view of the store (state, data, events, spectra) and the commands it takes."""
