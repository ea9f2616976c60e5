// iothub-telemetry as a JavaScript component: the twin of scripts/rules/iothub-telemetry.rhai and
// plugins/iothub-telemetry (Rust), byte for byte. A brownfield topic <site>/<device>/<measurement...>
// becomes IoT Hub telemetry of <device>:
//
//   JSON object payload  -> {"site":..,"device":..,"measurement":..,<original fields>}
//                           on devices/<device>/messages/events/$.ct=application%2Fjson&$.ce=utf-8
//   other JSON value     -> {"site":..,"device":..,"measurement":..,"value":<payload>}, same topic
//   not JSON (binary...) -> payload unchanged, topic levels in the property bag:
//                           devices/<device>/messages/events/site=..&measurement=..
//
// QoS 2 becomes 1 (IoT Hub supports 0 and 1), retain is dropped, user properties are kept.
// JSON is classified and quoted by the host (gatehost:plugin/json), as in every other engine.
// Build: `npm run build` in plugins/js (see plugins/js/README.md).

import { kind as jsonKind, quote } from 'gatehost:plugin/json@0.1.0';
import { percentEncode } from 'gatehost:plugin/crypto@0.1.0';

// JSON's own whitespace: what may surround a document or its members.
const JSON_WS = /^[ \t\n\r]+|[ \t\n\r]+$/g;
const decoder = new TextDecoder('utf-8');
const encoder = new TextEncoder();

export function translate(msg) {
  const topic = msg.topic;
  const first = topic.indexOf('/');
  const second = first < 0 ? -1 : topic.indexOf('/', first + 1);
  if (second < 0) {
    throw { kind: 'invalid-input', message: `topic '${topic}' does not have the form <site>/<device>/<measurement>` };
  }
  const site = topic.slice(0, first);
  const device = topic.slice(first + 1, second);
  const measurement = topic.slice(second + 1);
  if (device === '') {
    throw { kind: 'invalid-input', message: `topic '${topic}' has an empty device level` };
  }
  const events = `devices/${device}/messages/events/`;
  const kind = jsonKind(msg.payload);
  let outTopic;
  let payload = msg.payload;
  if (kind === 'invalid') {
    outTopic = `${events}site=${percentEncode(site)}&measurement=${percentEncode(measurement)}`;
  } else {
    const fields = `"site":${quote(site)},"device":${quote(device)},"measurement":${quote(measurement)}`;
    const text = decoder.decode(msg.payload).replace(JSON_WS, '');
    let body;
    if (kind === 'object') {
      const inner = text.slice(1, -1).replace(JSON_WS, '');
      body = inner === '' ? `{${fields}}` : `{${fields},${inner}}`;
    } else {
      body = `{${fields},"value":${text}}`;
    }
    payload = encoder.encode(body);
    outTopic = `${events}$.ct=application%2Fjson&$.ce=utf-8`;
  }
  return [{
    destination: { tag: 'upstream', val: device },
    message: { topic: outTopic, payload, qos: Math.min(msg.qos, 1), retain: false, properties: msg.properties },
  }];
}
