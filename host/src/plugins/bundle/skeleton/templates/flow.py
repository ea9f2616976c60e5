"""{name}: a gatehost onboarding flow (Python). `onboard(params)` receives the device's
[devices.params] as [(key, value), ...] and returns the connection the device uses (host, port,
client id, username, how to authenticate); `refresh(conn)` returns fresh credentials before
they expire. Raise Err(Error(kind, message)) to fail. The host API is
`wit_world.imports.<interface>` (see wit/).

Build (offline once componentize-py is installed: pip install componentize-py==0.25.1):
    componentize-py -d wit -w flow componentize app -o {name}.wasm
Try it: add a device with `flow = "{name}"` to gatehost.toml, then `gatehost onboard <device>`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Auth_Password, Connection, Credentials, Error, ErrorKind, ProtocolVersion


class WitWorld(wit_world.WitWorld):
    def onboard(self, params: list[tuple[str, str]]) -> Connection:
        p = dict(params)
        port = 8883
        if "port" in p:
            port = int(p["port"]) if p["port"].isdigit() else 0
            if not 1 <= port <= 65535:
                raise Err(Error(ErrorKind.INVALID_INPUT, f"port '{p['port']}' must be a number from 1 to 65535"))
        device = p["device_id"]
        return Connection(
            host=p["host"],
            port=port,
            client_id=device,
            username=device,
            auth=Auth_Password(p["password"]),
            ca_file=p.get("ca_file"),
            server_name=None,
            alpn=[],
            protocol=ProtocolVersion.MQTT311,
            keep_alive_secs=60,
            attributes=[("device-id", device)],
            expires_at=None,
        )

    def refresh(self, conn: Connection) -> Credentials:
        # A fixed password does not expire: nothing to renew.
        return Credentials(None, None, None)
