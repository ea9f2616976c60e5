// {name}: a gatehost rule (JavaScript). `translate(msg)` receives one local MQTT message
// ({ topic, payload: Uint8Array, qos, retain, properties: [[key, value], ...] }) and returns the
// messages to send: to a device's upstream session ({ tag: 'upstream', val: '<device>' }) or
// back to the local broker ({ tag: 'local' }). Throw { kind, message } to reject a message.
// The host API is imported from 'gatehost:plugin/<interface>@0.1.0' (see wit/).
//
// Build (once: npm install; then offline):  npm run build
// Try it:  gatehost rule test {name}.toml --topic plant1/press7/temperature --payload '{"value":21.5}'

import { percentEncode } from 'gatehost:plugin/crypto@0.1.0';

export function translate(msg) {
  return exported(() => {
    const levels = msg.topic.split('/');
    if (levels.length < 3 || levels[1] === '') {
      throw { kind: 'invalid-input', message: `topic '${msg.topic}' does not have the form <site>/<device>/<measurement>` };
    }
    const device = levels[1];
    return [{
      destination: { tag: 'upstream', val: device },
      message: {
        topic: `devices/${device}/messages/events/measurement=${percentEncode(levels[2])}`,
        payload: msg.payload,
        qos: Math.min(msg.qos, 1),
        retain: false,
        properties: msg.properties,
      },
    }];
  });
}

// Whatever the rule throws becomes the WIT error { kind, message }: a host call's error as it
// came, a bug (TypeError, ...) as a 'plugin' error with its stack.
function exported(body) {
  try {
    return body();
  } catch (e) {
    if (e && e.payload && typeof e.payload.kind === 'string') throw e.payload;
    if (e && typeof e.kind === 'string' && typeof e.message === 'string') throw e;
    throw { kind: 'plugin', message: String(e && e.stack ? `${e}\n${e.stack}` : e) };
  }
}
