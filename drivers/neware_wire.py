"""The Neware BTS API on the wire (BTS 8.0, TCP port 502): XML messages each ended by "\\n\\n#\\r\\n",
requests and replies, both ways; shared by the driver and the emulator.

A request is `<bts version="1.0"><cmd>NAME</cmd>...</bts>`, its reply `<cmd>NAME_resp</cmd>` with a
`<list>` of one element per channel (the channel list of getdevinfo sits in `<middle>`). Channels
are addressed by device type, device, sub-device (unit) and channel id. The shapes follow
aurora-neware and replies captured from a BTS 8.0 (its test mocks); where the wire is unknown,
this module decides and says so.
"""

from __future__ import annotations

import asyncio
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from cyclerd.drivers.base import InstrumentDisconnected, InstrumentGarbled, InstrumentTimeout

TERMINATOR = "\n\n#\r\n"
REQUEST_HEAD = '<?xml version="1.0" encoding="UTF-8" ?><bts version="1.0">'
REPLY_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\r\n<bts version="1.0">\r\n'
TAIL = "</bts>"
CHUNK = 1000  # records per download request, as aurora-neware asks

# A channel's work status (getchlstatus text, inquire's workstatus) in the BTS's own words.
WORKING, PAUSE, STOP, FINISH, PROTECT = "working", "pause", "stop", "finish", "protect"

# Log codes (inquire's log_code, downloadlog). 100000/100001 and 102000 appear in BTS 8.0
# captures (a test started, finished; working); the protection codes are this module's choice:
# Neware's own table is not public, so the driver and the emulator share these.
TEST_STARTED, TEST_FINISHED, TEST_STOPPED, STILL_WORKING = 100000, 100001, 100002, 102000
OVER_VOLTAGE, UNDER_VOLTAGE, OVER_CURRENT = 200001, 200002, 200003
OVER_CAPACITY, CHANNEL_FAULT = 200004, 200099
LOG_WORDS = {
    TEST_STARTED: "test started",
    TEST_FINISHED: "test finished",
    TEST_STOPPED: "test stopped",
    STILL_WORKING: "working",
    OVER_VOLTAGE: "voltage upper limit protection",
    UNDER_VOLTAGE: "voltage lower limit protection",
    OVER_CURRENT: "current upper limit protection",
    OVER_CAPACITY: "capacity upper limit protection",
    CHANNEL_FAULT: "channel protection",
}

# The requests, one template each, as aurora-neware sends them: {where} is a channel's address
# with the BTS PC's ip, {unit} the same without it. One channel per request: cyclerd drives each
# cycler channel over its own connection.
REQUESTS = {
    "connect": "<cmd>connect</cmd><username>admin</username><password>neware</password><type>bfgs</type>",
    "getdevinfo": "<cmd>getdevinfo</cmd>",
    "getchlstatus": '<cmd>getchlstatus</cmd><list count = "{count}">{each}</list>',
    "inquire": '<cmd>inquire</cmd><list count = "{count}">{each}</list>',
    "inquiredf": '<cmd>inquiredf</cmd><list count = "1"><chl {unit} testid="0" /></list>',
    "start": (
        '<cmd>start</cmd><list count = "1"><start {where} barcode={barcode}>{path}</start>{backup}</list>'
    ),
    "stop": '<cmd>stop</cmd><list count = "1"><stop {where}>true</stop></list>',
    "download": (
        '<cmd>download</cmd><download {unit} auxid="0" testid="{testid}" '
        'startpos="{startpos}" count="{count}"/>'
    ),
    "downloadlog": '<cmd>downloadlog</cmd><download {unit} testid="{testid}"/>',
}
EACH = {  # the per-channel element of the listed requests
    "getchlstatus": "<status {where}>true</status>",
    "inquire": '<inquire {where} aux="0" barcode="1">true</inquire>',
}
BACKUP = (
    '<backup backupdir={folder} remotedir="" filenametype="0" customfilename="" addtimewhenrepeat="0" '
    'createdirbydate="0" filetype="0" backupontime="1" backupontimeinterval="720" backupfree="1" />'
)


class WireError(ValueError):
    """A message that is not the XML the BTS API speaks (broken, or missing what it must hold)."""


@dataclass(frozen=True)
class Address:
    """Where a channel is: the BTS PC's ip, device type, device id, sub-device (unit) and channel id."""

    ip: str
    devtype: int
    devid: int
    subdevid: int
    chlid: int

    @property
    def key(self) -> str:
        """`devid-subdevid-chlid`, as BTS and aurora-neware name a channel ("pipeline")."""
        return f"{self.devid}-{self.subdevid}-{self.chlid}"

    def unit(self) -> str:
        return (
            f'devtype="{self.devtype}" devid="{self.devid}" subdevid="{self.subdevid}" chlid="{self.chlid}"'
        )

    def where(self) -> str:
        return f"ip={quoteattr(self.ip)} {self.unit()}"

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a request's or reply's channel element names this channel."""
        try:
            ids = (int(attributes["devid"]), int(attributes["subdevid"]), int(attributes["chlid"]))
        except (KeyError, ValueError):
            return False
        return ids == (self.devid, self.subdevid, self.chlid)


# -- requests -----------------------------------------------------------------------------------


def request(name: str, address: Address | None = None, **values: object) -> bytes:
    """The framed request `name` (a key of REQUESTS) for `address`, its other fields from `values`."""
    fields: dict[str, object] = dict(values)
    if address is not None:
        fields.update(where=address.where(), unit=address.unit())
        if name in EACH:
            fields.update(count=1, each=EACH[name].format(where=address.where()))
    return frame(REQUESTS[name].format(**fields))


def listed(name: str, addresses: Iterable[Address]) -> bytes:
    """A status request (getchlstatus or inquire) for several channels at once (a survey)."""
    chosen = list(addresses)
    each = "".join(EACH[name].format(where=a.where()) for a in chosen)
    return frame(REQUESTS[name].format(count=len(chosen), each=each))


def start_request(address: Address, path: str, barcode: str, folder: str) -> bytes:
    """Start the step file at `path` (a path on the BTS PC) on `address`, with `barcode` as its sample."""
    backup = BACKUP.format(folder=quoteattr(folder))
    return request("start", address, path=escape(path), barcode=quoteattr(barcode), backup=backup)


def frame(body: str) -> bytes:
    return (REQUEST_HEAD + body + TAIL + TERMINATOR).encode("utf-8")


# -- replies --------------------------------------------------------------------------------------


def reply(command: str, *parts: str) -> bytes:
    """A framed reply to `command`: `<cmd>command_resp</cmd>` and `parts`, one a line."""
    lines = [f"  <cmd>{command}_resp</cmd>", *(f"  {part}" for part in parts)]
    text = REPLY_HEAD + "\r\n".join(lines) + "\r\n" + TAIL + TERMINATOR
    # ASCII (other characters as references): clients decode each chunk they receive on its own.
    return text.encode("ascii", errors="xmlcharrefreplace")


def element(tag: str, attributes: Mapping[str, object], text: str | None = None) -> str:
    """`<tag a="..."/>`, or with `text` inside; values escaped."""
    attrs = " ".join(f"{name}={quoteattr(_text(value))}" for name, value in attributes.items())
    if text is None:
        return f"<{tag} {attrs} />"
    return f"<{tag} {attrs}>{escape(text)}</{tag}>"


def listing(items: Iterable[str], tag: str = "list") -> str:
    rows = list(items)
    return f'<{tag} count="{len(rows)}">' + "".join(f"\r\n    {row}" for row in rows) + f"\r\n  </{tag}>"


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


# -- reading messages -------------------------------------------------------------------------------


class Frames:
    """Cuts a byte stream into messages at the terminator."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        *messages, self._buffer = self._buffer.split(TERMINATOR.encode())
        return [m.decode("utf-8", errors="replace") for m in messages]


def parse(message: str) -> ET.Element:
    """The message's `<bts>` element; WireError when it is not well-formed XML."""
    try:
        root = ET.fromstring(message.strip())
    except ET.ParseError as exc:
        raise WireError(f"not well-formed XML ({exc}): {message[:120]!r}") from None
    if root.tag != "bts":
        raise WireError(f"a <{root.tag}> message where <bts> belongs: {message[:120]!r}")
    return root


def command_of(root: ET.Element) -> str:
    cmd = root.findtext("cmd")
    if not cmd:
        raise WireError("a message without its <cmd>")
    return cmd.strip()


Row = tuple[dict[str, str], str]  # an element's attributes and its text ("" when none)


def rows(root: ET.Element, container: str = "list", tag: str | None = None) -> list[Row]:
    """The elements inside `container` (`list`, or `middle` for getdevinfo), those named `tag`
    only when given (a start's list also holds its <backup>)."""
    found = root.find(container)
    if found is None:
        raise WireError(f"a {command_of(root)} message without its <{container}>")
    chosen = (child for child in found if tag is None or child.tag == tag)
    return [(dict(child.attrib), (child.text or "").strip()) for child in chosen]


def number(attributes: Mapping[str, str], name: str) -> float:
    """A numeric attribute; "--" (the BTS's "none") reads as 0."""
    text = attributes.get(name)
    if text is None:
        raise WireError(f"no {name} in {dict(attributes)}")
    if text.strip() == "--":
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise WireError(f"{name}={text!r} is not a number") from None


def address_of(attributes: Mapping[str, str], ip: str = "127.0.0.1") -> Address:
    """A getdevinfo channel element (its channel id is `Channelid`) as an Address."""
    try:
        return Address(
            attributes.get("ip", ip),
            int(attributes["devtype"]),
            int(attributes["devid"]),
            int(attributes["subdevid"]),
            int(attributes.get("Channelid", attributes.get("chlid", ""))),
        )
    except (KeyError, ValueError):
        raise WireError(f"a channel without a device, unit and channel id: {dict(attributes)}") from None


# -- the client's side ------------------------------------------------------------------------------


class BtsLink:
    """One connection to the BTS API: one request at a time, its reply read to the terminator.

    A reply that does not come in time, a failed connection or a request abandoned halfway (a
    cancelled step) closes the link, so that a late reply is never read as the next one's; the
    channel then reconnects.
    """

    def __init__(self, host: str, port: int, name: str, timeout_s: float) -> None:
        self.host, self.port, self.name, self.timeout_s = host, port, name, timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise InstrumentTimeout(self.name, f"no connection to {where} in {self.timeout_s:g} s") from None
        except OSError as exc:
            raise InstrumentDisconnected(self.name, f"cannot connect to {where}: {exc}") from None

    def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def ask(self, request: bytes) -> ET.Element:
        """Send one request and read its reply; InstrumentGarbled for a reply that is not XML."""
        async with self._lock:
            if self._writer is None or self._reader is None:
                raise InstrumentDisconnected(self.name, "not connected: the link was lost")
            frames, messages = Frames(), list[str]()
            try:
                async with asyncio.timeout(self.timeout_s):
                    self._writer.write(request)
                    await self._writer.drain()
                    while not messages:
                        if not (data := await self._reader.read(65536)):
                            raise ConnectionResetError("the BTS closed the connection")
                        messages = frames.feed(data)
            except TimeoutError:
                self.close()
                raise InstrumentTimeout(self.name, f"no reply within {self.timeout_s:g} s") from None
            except OSError as exc:
                self.close()
                raise InstrumentDisconnected(self.name, f"link failed: {exc}") from None
            except BaseException:
                self.close()  # cancelled halfway: the reply may still come
                raise
        try:
            return parse(messages[0])
        except WireError as exc:
            raise InstrumentGarbled(self.name, f"unreadable reply: {exc}") from None


def exchange(sock: socket.socket, request: bytes) -> ET.Element:
    """One request and its reply over a blocking socket (a survey, which must not need a loop)."""
    sock.sendall(request)
    frames = Frames()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the BTS closed the connection")
        if messages := frames.feed(data):
            return parse(messages[0])
