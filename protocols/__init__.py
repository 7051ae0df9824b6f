"""The protocol language: load protocol files, check them, compile them into step commands."""

from cyclerd.protocols.errors import Problem, ProtocolError
from cyclerd.protocols.loader import load, loads
from cyclerd.protocols.model import Protocol

__all__ = ["Problem", "Protocol", "ProtocolError", "load", "loads"]
