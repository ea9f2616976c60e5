// {name}: a gatehost onboarding flow (JavaScript). `onboard(params)` receives the device's
// [devices.params] as [[key, value], ...] and returns the connection the device uses (host,
// port, client id, username, how to authenticate); `refresh(conn)` returns fresh credentials
// before they expire. Throw { kind, message } to fail. WIT u64 values are BigInts.
// The host API is imported from 'gatehost:plugin/<interface>@0.1.0' (see wit/).
//
// Build (once: npm install; then offline):  npm run build
// Try it: add a device with `flow = "{name}"` to gatehost.toml, then `gatehost onboard <device>`.

export function onboard(params) {
  return exported(() => {
    const p = new Map(params);
    let port = 8883;
    if (p.has('port')) {
      port = /^\d+$/.test(p.get('port')) ? Number(p.get('port')) : 0;
      if (port < 1 || port > 65535) {
        throw { kind: 'invalid-input', message: `port '${p.get('port')}' must be a number from 1 to 65535` };
      }
    }
    const device = p.get('device_id');
    return {
      host: p.get('host'),
      port,
      clientId: device,
      username: device,
      auth: { tag: 'password', val: p.get('password') },
      caFile: p.get('ca_file'),
      serverName: undefined,
      alpn: [],
      protocol: 'mqtt311',
      keepAliveSecs: 60,
      attributes: [['device-id', device]],
      expiresAt: undefined,
    };
  });
}

export function refresh(conn) {
  // A fixed password does not expire: nothing to renew.
  return { username: undefined, password: undefined, expiresAt: undefined };
}

// Whatever the flow throws becomes the WIT error { kind, message }: a host call's error as it
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
