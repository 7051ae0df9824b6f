"""`cyclerd doctor`: checks that a lab PC is ready to serve, each with a verdict and a fix."""
