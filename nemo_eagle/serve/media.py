"""Images arriving over REST: data URLs and allow-listed http(s) URLs to bytes, with the size, pixel and
address checks done before anything is decoded. Decoding and tiling happen later, in ``EagleProcessor``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

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
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not s.allowed_image_hosts:
            raise EngineError(f"{name}: this server does not fetch image URLs; send the image as a data URL "
                              "(or start it with --allowed-image-hosts)", code="invalid_image_url", param=name)
        if not host_allowed(host, s.allowed_image_hosts):
            raise EngineError(f"{name}: host {host!r} is not on the image allow-list", code="invalid_image_url",
                              param=name)
        try:
            addresses = await _resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as e:
            raise EngineError(f"{name}: cannot resolve {host!r} ({e})", code="invalid_image_url", param=name) from e
        if not s.allow_private_image_urls:
            private = [a for a in addresses if not is_public_address(a)]
            if private:
                raise EngineError(f"{name}: {host!r} resolves to a private or loopback address ({private[0]}); "
                                  "refused", code="invalid_image_url", param=name)
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
        headers = {"Host": parts.netloc.rpartition("@")[2]}
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
        except httpx.HTTPError as e:
            raise EngineError(f"{name}: could not fetch the image URL ({type(e).__name__})", code="invalid_image_url",
                              param=name) from e

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
