"""Images arriving over REST: data URLs and allow-listed http(s) URLs to bytes, with the size, pixel and
address checks done before anything is decoded. Decoding and tiling happen later, in ``EagleProcessor``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from nemo_eagle.data.images import ImageError, ImageTooLarge, decode_data_url, read_image_header
from nemo_eagle.serve.engine import EngineError
from nemo_eagle.serve.settings import ServeSettings


@dataclass
class FetchedImage:
    data: bytes
    width: int  # after EXIF orientation, as the processor will see it
    height: int
    format: str


def _too_large(message: str, param: str) -> EngineError:
    return EngineError(message, status=413, code="payload_too_large", param=param)


def inspect_image(data: bytes, *, name: str, max_pixels: int) -> FetchedImage:
    """Read only the image header (the processor's one header reader): format, EXIF-rotated size and the pixel
    limit. Raises EngineError: 413 over the limit, 400 for anything that is not an image."""
    try:
        head = read_image_header(data, name=name, max_pixels=max_pixels)
    except ImageTooLarge as e:
        raise _too_large(str(e), name) from e
    except ImageError as e:
        raise EngineError(str(e), code="invalid_image", param=name) from e
    return FetchedImage(data=data, width=head.width, height=head.height, format=head.format)


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_image_url(url: str, name: str) -> tuple[SplitResult, str, int]:
    """An http(s) URL split into (parts, host in ASCII, port), or a 400 naming ``name`` for anything malformed:
    bad brackets, a port out of range, an empty or over-long label, characters no host name has."""

    def bad(why: str) -> EngineError:
        return EngineError(f"{name}: malformed image URL ({why})", code="invalid_image_url", param=name)

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise bad(str(e)) from None
    if not host:
        raise bad("no host")
    if port == 0:
        raise bad("port 0")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if "[" in parts.netloc and (ip is None or ip.version != 6):
        raise bad(f"[{host}] is not an IPv6 address")
    if ip is not None:
        host = ip.compressed
    else:
        try:
            host = host.rstrip(".").encode("idna").decode("ascii").lower()
        except (UnicodeError, ValueError):
            raise bad(f"{host!r} is not a valid host name") from None
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
            raise bad(f"{host!r} is not a valid host name")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class ImageFetcher:
    """Turns the ``url`` of an ``image_url`` part into checked bytes, under the server's limits."""

    def __init__(self, settings: ServeSettings, http_client=None):
        self.settings = settings
        self.http = http_client  # an httpx.AsyncClient, created on first use of an http(s) URL

    async def fetch(self, url: str, *, name: str) -> FetchedImage:
        s = self.settings
        if url.startswith("data:"):
            payload = url.partition(",")[2]
            if 3 * (len(payload) // 4) > s.max_image_bytes:
                raise _too_large(f"{name}: image is about {3 * (len(payload) // 4)} bytes, over the limit of "
                                 f"{s.max_image_bytes} bytes", name)
            try:
                data = decode_data_url(url)
            except ImageError as e:
                raise EngineError(f"{name}: {e}", code="invalid_image", param=name) from e
        elif url.startswith(("http://", "https://")):
            data = await self._download(url, name)
        else:
            scheme = urlsplit(url).scheme or url[:16]
            raise EngineError(f"{name}: unsupported image URL scheme {scheme!r}; send a data:image/...;base64 URL"
                              " or an allowed http(s) URL", code="invalid_image_url", param=name)
        if len(data) > s.max_image_bytes:
            raise _too_large(f"{name}: image is {len(data)} bytes, over the limit of {s.max_image_bytes} bytes", name)
        return inspect_image(data, name=name, max_pixels=s.max_image_pixels)

    async def _download(self, url: str, name: str) -> bytes:
        s = self.settings
        if not s.allowed_image_hosts:
            raise EngineError(f"{name}: this server does not fetch image URLs; send the image as a data URL "
                              "(or start it with --allowed-image-hosts)", code="invalid_image_url", param=name)
        parts, host, port = parse_image_url(url, name)
        if not host_allowed(host, s.allowed_image_hosts):
            raise EngineError(f"{name}: host {host!r} is not on the image allow-list", code="invalid_image_url",
                              param=name)
        try:  # one deadline for the whole fetch: name lookup, connect and every byte of the body
            async with asyncio.timeout(s.image_fetch_timeout):
                return await self._fetch_checked(parts, host, port, name)
        except TimeoutError:
            raise EngineError(f"{name}: fetching the image URL took longer than {s.image_fetch_timeout:g} s "
                              "(--image-fetch-timeout)", code="image_fetch_timeout", param=name) from None

    async def _fetch_checked(self, parts: SplitResult, host: str, port: int, name: str) -> bytes:
        s = self.settings
        try:
            addresses = await _resolve(host, port)
        except (OSError, ValueError) as e:  # UnicodeError (a ValueError) for names the IDNA codec refuses
            raise EngineError(f"{name}: cannot resolve {host!r}", code="invalid_image_url", param=name) from e
        if not s.allow_private_image_urls and any(not is_public_address(a) for a in addresses):
            # NOTE: never say which address: that would map the server's internal network for the client
            raise EngineError(f"{name}: {host!r} resolves to a private or loopback address; refused",
                              code="invalid_image_url", param=name)
        import httpx

        if self.http is None:
            self.http = httpx.AsyncClient(timeout=s.image_fetch_timeout, follow_redirects=False)
        # Connect to the address that was checked, not to whatever a second lookup returns (DNS rebinding); the
        # Host header and TLS server name (SNI + certificate check) stay the URL's host.
        ip = addresses[0]
        netloc = f"[{ip}]" if ":" in ip else ip
        if parts.port:
            netloc += f":{parts.port}"
        pinned = parts._replace(netloc=netloc).geturl()
        headers = {"Host": (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        try:
            async with self.http.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
                if resp.status_code != 200:
                    raise EngineError(f"{name}: fetching the image URL gave HTTP {resp.status_code}"
                                      + (" (redirects are not followed)" if resp.is_redirect else ""),
                                      code="invalid_image_url", param=name)
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > s.max_image_bytes:
                        raise _too_large(f"{name}: image URL body exceeds {s.max_image_bytes} bytes", name)
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            raise EngineError(f"{name}: could not fetch the image URL ({type(e).__name__})", code="invalid_image_url",
                              param=name) from e

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
