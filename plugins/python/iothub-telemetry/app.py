"""iothub-telemetry as a Python component: the twin of scripts/rules/iothub-telemetry.rhai and
plugins/iothub-telemetry (Rust), byte for byte. A brownfield topic <site>/<device>/<measurement...>
becomes IoT Hub telemetry of <device>:

  JSON object payload  -> {"site":..,"device":..,"measurement":..,<original fields>}
                          on devices/<device>/messages/events/$.ct=application%2Fjson&$.ce=utf-8
  other JSON value     -> {"site":..,"device":..,"measurement":..,"value":<payload>}, same topic
  not JSON (binary...) -> payload unchanged, topic levels in the property bag:
                          devices/<device>/messages/events/site=..&measurement=..

QoS 2 becomes 1 (IoT Hub supports 0 and 1), retain is dropped, user properties are kept.
JSON is classified and quoted by the host (gatehost:plugin/json), as in every other engine.
Build: python plugins/python/build.py (see plugins/python/README.md).
"""

import wit_world
from wit_world.imports import json as hjson, crypto
from wit_world.imports.types import Message, Outbound, Destination_Upstream, Error, ErrorKind
from componentize_py_types import Err

# JSON's own whitespace: what may surround a document or its members.
JSON_WS = " \t\n\r"

class WitWorld(wit_world.WitWorld):
    def translate(self, msg: Message):
        levels = msg.topic.split("/", 2)
        if len(levels) < 3:
            raise Err(Error(ErrorKind.INVALID_INPUT, f"topic '{msg.topic}' does not have the form <site>/<device>/<measurement>"))
        site, device, measurement = levels
        if device == "":
            raise Err(Error(ErrorKind.INVALID_INPUT, f"topic '{msg.topic}' has an empty device level"))
        events = f"devices/{device}/messages/events/"
        kind = hjson.kind(msg.payload)
        payload = msg.payload
        if kind == hjson.JsonKind.INVALID:
            topic = f"{events}site={crypto.percent_encode(site)}&measurement={crypto.percent_encode(measurement)}"
        else:
            fields = f'"site":{hjson.quote(site)},"device":{hjson.quote(device)},"measurement":{hjson.quote(measurement)}'
            text = msg.payload.decode("utf-8").strip(JSON_WS)
            if kind == hjson.JsonKind.OBJECT:
                inner = text[1:-1].strip(JSON_WS)
                payload = (f"{{{fields}}}" if inner == "" else f"{{{fields},{inner}}}").encode()
            else:
                payload = f"{{{fields},\"value\":{text}}}".encode()
            topic = f"{events}$.ct=application%2Fjson&$.ce=utf-8"
        return [Outbound(Destination_Upstream(device), Message(topic, payload, min(msg.qos, 1), False, msg.properties))]
