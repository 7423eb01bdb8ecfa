"""M8's PHP side: ``sendToGroup`` as PHP's GatewayClient sends it, over GatewayWorker's
GatewayProtocol, to a gateway's internal port.

:class:`PhpPusher` builds every packet the way GatewayClient does (the ext data JSON
and the header for each call) with the package's own encoder, and sends it either on
one persistent link (``Gateway::$persistentConnection = true``: php-fpm keeps the
socket across requests) or on a new connection per call (GatewayClient's default).
:func:`php_cli_burst` runs ``bench/phppush.php``, a PHP loop of the same calls, when
php-cli is installed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pygatewayworker.gateway.gatewayprotocol import PhpCmd, auth_packet, encode_packet, php_json

__all__ = ["PhpPusher", "php_cli_burst", "PHP_SCRIPT"]

PHP_SCRIPT = Path(__file__).resolve().parent / "phppush.php"
_HIGH_WATER = 1 << 20


class PhpPusher:
    """GatewayClient's ``sendToGroup`` to one gateway (``ip:port``)."""

    def __init__(self, address: str, secret: str = "") -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.secret = secret
        self.writer: asyncio.StreamWriter | None = None

    def packet(self, group: str, message: str) -> bytes:
        ext = php_json({"group": [group], "exclude": None})
        data = encode_packet(PhpCmd.SEND_TO_GROUP, ext_data=ext, body=message)
        return auth_packet(self.secret) + data if self.secret else data

    async def open(self) -> None:
        """Open the persistent link."""
        _, self.writer = await asyncio.open_connection(self.host, self.port)

    async def send_to_group(self, group: str, message: str) -> None:
        """One call on the persistent link (waits only when the socket is full)."""
        writer = self.writer
        assert writer is not None
        writer.write(self.packet(group, message))
        if writer.transport.get_write_buffer_size() > _HIGH_WATER:
            await writer.drain()

    async def send_to_group_once(self, group: str, message: str) -> None:
        """One call on its own connection, as GatewayClient does by default."""
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.packet(group, message))
        writer.close()
        await writer.wait_closed()

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.drain()
            self.writer.close()
            await self.writer.wait_closed()
            self.writer = None


async def php_cli_burst(php: str, address: str, group: str, count: int) -> float:
    """Run ``count`` sendToGroup calls from php-cli on one persistent link; the
    seconds PHP took to make them (printed by the script)."""
    proc = await asyncio.create_subprocess_exec(
        php,
        str(PHP_SCRIPT),
        address,
        group,
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60 + count / 1000)
    if proc.returncode != 0:
        raise RuntimeError(f"php exited with {proc.returncode}: {err.decode()[-500:]}")
    return float(out.decode().strip())
