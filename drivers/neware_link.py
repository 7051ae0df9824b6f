"""One cycler channel's conversation with the BTS API: its connection, its address (the n-th
channel getdevinfo lists), and the requests the driver makes of it, each answered in SI or as the
BTS's own words, its failures as InstrumentFault in the channel's name.

The vocabulary (request templates, reply shapes) is `neware_wire`'s; what to do with the answers
is the channel's (`neware.NewareChannel`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.base import InstrumentDisconnected, InstrumentFault, InstrumentGarbled

Record = dict[str, str]  # one downloaded record's attributes, as the BTS sends them


class ChannelLink:
    """Cycler channel `cycler_channel` (from 1, in getdevinfo's order) of the BTS at host:port."""

    def __init__(self, host: str, port: int, cycler_channel: int, timeout_s: float) -> None:
        self.host, self.port, self.cycler_channel, self.timeout_s = host, port, cycler_channel, timeout_s
        self.address: wire.Address | None = None  # found once; a BTS that changes it is refused
        self._link: wire.BtsLink | None = None

    @property
    def name(self) -> str:
        where = f" ({self.address.key})" if self.address is not None else ""
        return f"Neware {self.host}:{self.port} channel {self.cycler_channel}{where}"

    # -- the connection ------------------------------------------------------------------------------

    async def open(self) -> None:
        """A new connection, logged in, the channel found (the same one as before, if any)."""
        link = wire.BtsLink(self.host, self.port, self.name, self.timeout_s)
        await link.open()
        try:
            found = await self._find(link)
        except BaseException:
            link.close()
            raise
        self.address, self._link = found, link

    async def _find(self, link: wire.BtsLink) -> wire.Address:
        await link.ask(wire.request("connect"))
        try:
            listed = wire.rows(await link.ask(wire.request("getdevinfo")), "middle")
            channels = [wire.address_of(attributes, self.host) for attributes, _ in listed]
        except wire.WireError as exc:
            raise InstrumentGarbled(self.name, f"unreadable channel list: {exc}") from None
        if not 1 <= self.cycler_channel <= len(channels):
            raise InstrumentFault(self.name, f"no such channel: the BTS lists channels 1 to {len(channels)}")
        found = channels[self.cycler_channel - 1]
        if self.address is not None and found != self.address:
            raise InstrumentFault(
                self.name, f"channel {self.cycler_channel} is now {found.key}: the BTS's changed"
            )
        return found

    @property
    def connected(self) -> bool:
        return self._link is not None

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    # -- the requests ----------------------------------------------------------------------------------

    @property
    def where(self) -> wire.Address:
        if self.address is None:
            raise InstrumentDisconnected(self.name, "not open: call open() first")
        return self.address

    async def inquire(self) -> dict[str, str]:
        """The channel's state: work status, sample (barcode), the latest point, log code."""
        rows = await self._rows(wire.request("inquire", self.where))
        if not rows:
            raise InstrumentGarbled(self.name, "inquire told nothing of the channel")
        return rows[0][0]

    async def latest_test(self) -> int:
        """The BTS's id of the channel's latest test (running or over)."""
        rows = await self._rows(wire.request("inquiredf", self.where))
        if not rows:
            raise InstrumentGarbled(self.name, "inquiredf named no test")
        return int(self.number(rows[0][0], "testid"))

    async def start(self, path: str, barcode: str, folder: str) -> str:
        """Start the step file at `path` (on the BTS PC) with sample `barcode`: the BTS's answer."""
        return self._answer(await self._rows(wire.start_request(self.where, path, barcode, folder)))

    async def stop(self) -> str:
        """Stop the channel's test: the BTS's answer ("ok"; "false" with nothing running)."""
        return self._answer(await self._rows(wire.request("stop", self.where)))

    async def download(self, test_id: int, seen: int) -> list[Record]:
        """Test `test_id`'s records after its first `seen`, in pages of wire.CHUNK."""
        got: list[Record] = []
        while True:
            request = wire.request(
                "download", self.where, testid=test_id, startpos=seen + len(got) + 1, count=wire.CHUNK
            )
            rows = [attributes for attributes, _ in await self._rows(request)]
            got += rows
            if len(rows) < wire.CHUNK:
                return got

    def number(self, attributes: dict[str, str], name: str) -> float:
        """A numeric attribute of a reply; InstrumentGarbled when it is missing or not a number."""
        try:
            return wire.number(attributes, name)
        except wire.WireError as exc:
            raise InstrumentGarbled(self.name, str(exc)) from None

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _ask(self, request: bytes) -> ET.Element:
        if self._link is None:
            raise InstrumentDisconnected(self.name, "not connected: the link was lost")
        return await self._link.ask(request)

    async def _rows(self, request: bytes, container: str = "list") -> list[wire.Row]:
        """The elements of the reply to `request` (InstrumentGarbled when it has none)."""
        try:
            return wire.rows(await self._ask(request), container)
        except wire.WireError as exc:
            raise InstrumentGarbled(self.name, str(exc)) from None

    @staticmethod
    def _answer(rows: list[wire.Row]) -> str:
        return next((text for _, text in rows), "")
