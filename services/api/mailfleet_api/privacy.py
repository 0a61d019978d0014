"""What the API shows of where a recipient's open or click came from."""

import ipaddress
from typing import Any, Literal

IpShown = Literal["full", "truncated", "none"]

_V4_PREFIX = 24
_V6_PREFIX = 48


def shown_ip(ip: str | None, mode: IpShown) -> str | None:
    """The address as `mode` allows: as recorded, its network (/24, /48), or nothing."""
    if ip is None or mode == "none":
        return None
    if mode == "full":
        return ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None  # not an address: nothing of it can be shown safely
    prefix = _V4_PREFIX if address.version == 4 else _V6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def event_data(data: dict[str, Any], mode: IpShown) -> dict[str, Any]:
    """An event's data with its `ip` (tracking hits) as `mode` allows."""
    if "ip" not in data:
        return data
    shown = shown_ip(data["ip"], mode)
    rest = {k: v for k, v in data.items() if k != "ip"}
    return rest if shown is None else {**rest, "ip": shown}
