"""{name}: a gatehost rule (Python). `translate(msg)` receives one local MQTT message
(msg.topic, msg.payload: bytes, msg.qos, msg.retain, msg.properties: [(key, value), ...]) and
returns the messages to send: to a device's upstream session (Destination_Upstream("<device>"))
or back to the local broker (Destination_Local()). Raise Err(Error(kind, message)) to reject a
message. The host API is `wit_world.imports.<interface>` (see wit/).

Build (offline once componentize-py is installed: pip install componentize-py==0.25.1):
    componentize-py -d wit -w rule componentize app -o {name}.wasm
Try it:  gatehost rule test {name}.toml --topic plant1/press7/temperature --payload '{"value":21.5}'
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import crypto
from wit_world.imports.types import Destination_Upstream, Error, ErrorKind, Message, Outbound


class WitWorld(wit_world.WitWorld):
    def translate(self, msg: Message) -> list[Outbound]:
        levels = msg.topic.split("/")
        if len(levels) < 3 or levels[1] == "":
            raise Err(Error(ErrorKind.INVALID_INPUT, f"topic '{msg.topic}' does not have the form <site>/<device>/<measurement>"))
        device = levels[1]
        topic = f"devices/{device}/messages/events/measurement={crypto.percent_encode(levels[2])}"
        out = Message(topic, msg.payload, min(msg.qos, 1), False, msg.properties)
        return [Outbound(Destination_Upstream(device), out)]
