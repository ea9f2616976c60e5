// azure-dps as a JavaScript component: the twin of scripts/flows/azure-dps.rhai (its MQTT
// transport) and plugins/azure-dps (Rust), giving the same connection, the same errors and the
// same kv entries for every attestation (symmetric key, group key, X.509). The protocol is
// described in the script's header; the functions here follow it one by one.
// Build: `npm run build` in plugins/js (see plugins/js/README.md).
//
// Host calls that fail throw a ComponentError whose `payload` is the host's { kind, message };
// `fail` throws the same shape, and `exported` hands either to gatehost as the flow's error.

import { readChain, KeyPair } from 'gatehost:plugin/certs@0.1.0';
import { deriveDeviceKey, nowUnix, sasToken } from 'gatehost:plugin/crypto@0.1.0';
import { get as kvGet, set as kvSet } from 'gatehost:plugin/kv@0.1.0';
import { log } from 'gatehost:plugin/log@0.1.0';
import { Session } from 'gatehost:plugin/mqtt@0.1.0';
import { sleepMs } from 'gatehost:plugin/time@0.1.0';

const REPLIES = '$dps/registrations/res/';
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

function fail(kind, message) {
  throw { kind, message };
}

// Run an export, turning whatever it throws into the WIT `error` record.
function exported(body) {
  try {
    return body();
  } catch (e) {
    if (e && e.payload && typeof e.payload.kind === 'string') throw e.payload;
    if (e && typeof e.kind === 'string' && typeof e.message === 'string') throw e;
    throw { kind: 'plugin', message: String(e && e.stack ? e.stack : e) };
  }
}

// Unix seconds as a JS number (the WIT u64 arrives as a BigInt).
const now = () => Number(nowUnix());

// The flow's parameters, by name.
class Params {
  constructor(pairs) {
    this.map = new Map(pairs);
  }
  get(name) {
    return this.map.get(name);
  }
  has(name) {
    return this.map.has(name);
  }
  required(name) {
    if (!this.has(name)) fail('invalid-input', `missing parameters: ${name}`);
    return this.get(name);
  }
  number(name, fallback) {
    if (!this.has(name)) return fallback;
    const text = this.get(name);
    const n = /^\d+$/.test(text) ? Number(text) : NaN;
    if (!(n > 0)) fail('invalid-input', `parameter ${name} must be a positive number, got '${text}'`);
    return n;
  }
}

// Exactly one attestation (gatehost has already checked the required parameters).
function checkParams(p) {
  const x509 = p.has('certificate') || p.has('key');
  const ways = [p.has('symmetric_key'), p.has('group_key'), x509].filter(Boolean).length;
  if (x509) {
    for (const name of ['certificate', 'key']) {
      if (!p.has(name)) fail('invalid-input', `missing parameters: ${name} (X.509 needs certificate and key)`);
    }
  }
  if (ways === 0) fail('invalid-input', 'missing parameters: symmetric_key | group_key | certificate + key');
  if (ways > 1) fail('invalid-input', 'give one attestation: symmetric_key, group_key, or certificate + key');
  if (!p.has('registration_id') && !p.has('certificate')) fail('invalid-input', 'missing parameters: registration_id');
}

// The device key for SAS attestation, or undefined for X.509.
function deviceKey(p, id) {
  if (p.has('symmetric_key')) return p.get('symmetric_key');
  if (p.has('group_key')) return deriveDeviceKey(p.get('group_key'), id);
  return undefined;
}

const keyRef = (p) => KeyPair.load(p.required('key'), undefined).reference();

function tlsOptions(p) {
  return {
    caFile: p.get('ca_file'),
    clientCertificate: p.has('certificate') ? { chainFile: p.get('certificate'), keyRef: keyRef(p) } : undefined,
    serverName: undefined,
    alpn: [],
  };
}

// A JSON value as the script would interpolate it: strings bare, the rest as JSON.
function text(v, fallback) {
  if (v === undefined) return fallback;
  return typeof v === 'string' ? v : JSON.stringify(v);
}

// One DPS answer: { status, retryAfter (0 when absent), body }.
function parseReply(msg, rid) {
  const rest = msg.topic.slice(REPLIES.length);
  const at = rest.indexOf('/?');
  const [status, query] = at < 0 ? [rest, ''] : [rest.slice(0, at), rest.slice(at + 2)];
  let retryAfter = 0;
  let gotRid = '';
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    const [k, v] = [pair.slice(0, eq), pair.slice(eq + 1)];
    if (k === 'retry-after') retryAfter = /^\d+$/.test(v) ? Number(v) : 0;
    if (k === '$rid') gotRid = v;
  }
  if (gotRid !== String(rid)) fail('remote', `DPS answered request ${gotRid}, not ${rid}`);
  let body = null;
  try {
    body = JSON.parse(decoder.decode(msg.payload));
  } catch {
    body = null;
  }
  return { status: /^\d+$/.test(status) ? Number(status) : 0, retryAfter, body: body ?? {} };
}

function request(session, topic, body, rid, deadline) {
  session.publish({ topic, payload: encoder.encode(body), qos: 1, retain: false, properties: [] });
  for (;;) {
    const left = deadline - now();
    if (left <= 0) fail('timeout', "DPS did not answer before the flow's deadline");
    const msg = session.receive(Math.min(left * 1000, 0xffffffff));
    if (msg === undefined) fail('timeout', `DPS did not answer request ${rid}`);
    if (msg.topic.startsWith(REPLIES)) return parseReply(msg, rid);
  }
}

function waitSecs(secs, deadline) {
  if (now() + secs > deadline) fail('timeout', "the registration did not finish before the flow's deadline");
  sleepMs(secs * 1000);
}

// The register request's body: {"registrationId", "payload"?}, or empty for MindConnect eu2.
function registerBody(p, id) {
  if (p.get('empty_register_body') === 'true') return '';
  const body = { registrationId: id };
  if (p.has('payload')) {
    try {
      body.payload = JSON.parse(p.get('payload'));
    } catch (e) {
      fail('invalid-input', `parameter payload is not JSON: ${e.message}`);
    }
  }
  return JSON.stringify(body);
}

// What DPS says to one request: { done: answer } or { op, wait } to ask again.
function step(reply, op, id) {
  const answer = reply.body;
  if (reply.status === 200 || reply.status === 202) {
    const state = text(answer.status, '');
    if (state !== 'assigning' && state !== '') return { done: answer };
    return { op: text(answer.operationId, ''), wait: Math.max(reply.retryAfter, 2) };
  }
  if (reply.status === 429) {
    const secs = Math.max(reply.retryAfter, 1);
    log('warn', `DPS throttled '${id}': waiting ${secs} s as it asks`);
    return { op, wait: secs };
  }
  const code = text(answer.errorCode, String(reply.status));
  const why = text(answer.message, 'no reason given');
  fail(reply.status >= 500 ? 'remote' : 'refused', `DPS answered ${reply.status} to '${id}' (errorCode ${code}: ${why})`);
}

// Register over MQTT, then poll the operation until the registration is done.
function registerOverMqtt(p, scope, id, key, ttl, deadline) {
  const password =
    key === undefined
      ? undefined
      : sasToken(`${scope}/registrations/${id}`, key, 'registration', BigInt(now() + ttl));
  const port = p.number('dps_port', 8883);
  if (port > 65535) fail('invalid-input', 'dps_port is not a port');
  const session = Session.connect({
    host: p.get('dps_host') ?? 'global.azure-devices-provisioning.net',
    port,
    clientId: id,
    username: `${scope}/registrations/${id}/api-version=2019-03-31`,
    password,
    keepAliveSecs: 60,
    cleanSession: true,
    protocol: 'mqtt311',
    tls: tlsOptions(p),
    connectTimeoutMs: 30000,
  });
  session.subscribe('$dps/registrations/res/#', 1);
  const body = registerBody(p, id);
  let rid = 0;
  let op;
  for (;;) {
    rid += 1;
    const reply =
      op === undefined
        ? request(session, `$dps/registrations/PUT/iotdps-register/?$rid=${rid}`, body, rid, deadline)
        : request(session, `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=${rid}&operationId=${op}`, '', rid, deadline);
    const next = step(reply, op, id);
    if (next.done !== undefined) {
      session.disconnect();
      return next.done;
    }
    op = next.op;
    waitSecs(next.wait, deadline);
  }
}

// The IoT Hub connection of an assigned registration.
function connection(p, answer, key, ttl) {
  const state = answer.registrationState ?? {};
  const hub = text(state.assignedHub, '');
  const device = text(state.deviceId, '');
  const version = p.get('hub_api_version') ?? '2021-04-12';
  const port = p.number('hub_port', 8883);
  if (port > 65535) fail('invalid-input', 'hub_port is not a port');
  let auth;
  let expiresAt;
  if (key === undefined) {
    auth = { tag: 'client-certificate', val: { chainFile: p.required('certificate'), keyRef: keyRef(p) } };
  } else {
    // The device key stays in the flow's own kv namespace, for `refresh`.
    kvSet(`device-key/${device}`, encoder.encode(key));
    const expiry = now() + ttl;
    auth = { tag: 'password', val: sasToken(`${hub}/devices/${device}`, key, undefined, BigInt(expiry)) };
    expiresAt = BigInt(expiry);
  }
  return {
    host: hub,
    port,
    clientId: device,
    username: `${hub}/${device}/?api-version=${version}`,
    auth,
    caFile: p.get('ca_file'),
    serverName: undefined,
    alpn: [],
    protocol: 'mqtt311',
    keepAliveSecs: 60,
    attributes: [
      ['assigned-hub', hub],
      ['device-id', device],
      ['registration-id', text(state.registrationId, '')],
      ['token-ttl-secs', String(ttl)],
    ],
    expiresAt,
  };
}

export function onboard(params) {
  return exported(() => {
    const p = new Params(params);
    checkParams(p);
    if (p.has('transport') && p.get('transport') !== 'mqtt') {
      fail('unsupported', 'this JavaScript flow registers over MQTT only; use azure-dps-rest for HTTPS');
    }
    const scope = p.required('id_scope');
    let id = p.get('registration_id');
    if (id === undefined) {
      const chain = readChain(p.required('certificate'));
      if (chain.length === 0) fail('invalid-input', 'the certificate file is empty');
      id = chain[0].subjectCn;
    }
    const deadline = now() + p.number('timeout_secs', 90);
    const ttl = p.number('token_ttl_secs', 3600);
    const key = deviceKey(p, id);
    const answer = registerOverMqtt(p, scope, id, key, ttl, deadline);
    const state = text(answer.status, '');
    if (state !== 'assigned') {
      const reg = answer.registrationState ?? {};
      const code = text(reg.errorCode, '-');
      const why = text(reg.errorMessage, 'no reason given');
      fail('refused', `DPS registration of '${id}' ended '${state}' (errorCode ${code}: ${why})`);
    }
    return connection(p, answer, key, ttl);
  });
}

// A fresh hub SAS token (X.509 connections need nothing).
export function refresh(conn) {
  return exported(() => {
    if (conn.auth.tag !== 'password') return { username: undefined, password: undefined, expiresAt: undefined };
    const attrs = new Map(conn.attributes);
    const device = attrs.get('device-id') ?? '';
    const stored = kvGet(`device-key/${device}`);
    if (stored === undefined) fail('not-found', `no device key for '${device}': onboard it again`);
    const key = decoder.decode(stored);
    const ttl = /^\d+$/.test(attrs.get('token-ttl-secs') ?? '') ? Number(attrs.get('token-ttl-secs')) : 3600;
    const expiry = now() + ttl;
    return {
      username: conn.username,
      password: sasToken(`${attrs.get('assigned-hub') ?? ''}/devices/${device}`, key, undefined, BigInt(expiry)),
      expiresAt: BigInt(expiry),
    };
  });
}
