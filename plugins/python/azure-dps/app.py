"""azure-dps as a Python component: the twin of scripts/flows/azure-dps.rhai (its MQTT transport)
and plugins/azure-dps (Rust), giving the same connection, the same errors and the same kv entries
for every attestation (symmetric key, group key, X.509). The protocol is described in the
script's header; the functions here follow it one by one.
Build: python plugins/python/build.py (see plugins/python/README.md).

Host calls that fail raise `Err(Error)`; `fail` raises the same, and componentize-py hands it to
gatehost as the flow's error. Any other exception is a bug in the flow: it traps, and gatehost
reports the trap with the traceback in its log.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import certs, crypto, kv, log, mqtt, time
from wit_world.imports.types import (
    Auth_ClientCertificate,
    Auth_Password,
    ClientCertificate,
    Connection,
    Credentials,
    Error,
    ErrorKind,
    Message,
    ProtocolVersion,
)

REPLIES = "$dps/registrations/res/"
DIGITS = re.compile(r"[0-9]+")


def fail(kind: ErrorKind, message: str):
    raise Err(Error(kind, message))


def number_or(text: str, fallback: int) -> int:
    return int(text) if DIGITS.fullmatch(text) else fallback


class Params:
    """The flow's parameters, by name."""

    def __init__(self, pairs):
        self.map = dict(pairs)

    def get(self, name, fallback=None):
        return self.map.get(name, fallback)

    def has(self, name) -> bool:
        return name in self.map

    def required(self, name) -> str:
        if name not in self.map:
            fail(ErrorKind.INVALID_INPUT, f"missing parameters: {name}")
        return self.map[name]

    def number(self, name, fallback: int) -> int:
        if name not in self.map:
            return fallback
        text = self.map[name]
        n = number_or(text, 0)
        if n <= 0:
            fail(ErrorKind.INVALID_INPUT, f"parameter {name} must be a positive number, got '{text}'")
        return n


def check_params(p: Params):
    """Exactly one attestation (gatehost has already checked the required parameters)."""
    x509 = p.has("certificate") or p.has("key")
    ways = sum([p.has("symmetric_key"), p.has("group_key"), x509])
    if x509:
        for name in ("certificate", "key"):
            if not p.has(name):
                fail(ErrorKind.INVALID_INPUT, f"missing parameters: {name} (X.509 needs certificate and key)")
    if ways == 0:
        fail(ErrorKind.INVALID_INPUT, "missing parameters: symmetric_key | group_key | certificate + key")
    if ways > 1:
        fail(ErrorKind.INVALID_INPUT, "give one attestation: symmetric_key, group_key, or certificate + key")
    if not p.has("registration_id") and not p.has("certificate"):
        fail(ErrorKind.INVALID_INPUT, "missing parameters: registration_id")


def device_key(p: Params, registration_id: str):
    """The device key for SAS attestation, or None for X.509."""
    if p.has("symmetric_key"):
        return p.get("symmetric_key")
    if p.has("group_key"):
        return crypto.derive_device_key(p.get("group_key"), registration_id)
    return None


def key_ref(p: Params) -> str:
    return certs.KeyPair.load(p.required("key"), None).reference()


def tls_options(p: Params) -> mqtt.TlsOptions:
    client = ClientCertificate(p.get("certificate"), key_ref(p)) if p.has("certificate") else None
    return mqtt.TlsOptions(ca_file=p.get("ca_file"), client_certificate=client, server_name=None, alpn=[])


def field(obj: dict, name: str, fallback: str) -> str:
    """A JSON member as the script would interpolate it: strings bare, the rest (null too) as JSON."""
    if name not in obj:
        return fallback
    v = obj[name]
    return v if isinstance(v, str) else compact(v)


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Reply:
    """One DPS answer: status, retry-after seconds (0 when absent) and the JSON body."""

    def __init__(self, status: int, retry_after: int, body: dict):
        self.status, self.retry_after, self.body = status, retry_after, body


def parse_reply(msg: Message, rid: int) -> Reply:
    rest = msg.topic[len(REPLIES):]
    status, _, query = rest.partition("/?")
    retry_after, got_rid = 0, ""
    for pair in query.split("&"):
        k, eq, v = pair.partition("=")
        if not eq:
            continue
        if k == "retry-after":
            retry_after = number_or(v, 0)
        if k == "$rid":
            got_rid = v
    if got_rid != str(rid):
        fail(ErrorKind.REMOTE, f"DPS answered request {got_rid}, not {rid}")
    try:
        body = json.loads(msg.payload.decode("utf-8"))
    except ValueError:
        body = None
    return Reply(number_or(status, 0), retry_after, body if isinstance(body, dict) else {})


def request(session: mqtt.Session, topic: str, body: str, rid: int, deadline: int) -> Reply:
    session.publish(Message(topic, body.encode(), 1, False, []))
    while True:
        left = deadline - crypto.now_unix()
        if left <= 0:
            fail(ErrorKind.TIMEOUT, "DPS did not answer before the flow's deadline")
        msg = session.receive(min(left * 1000, 0xFFFFFFFF))
        if msg is None:
            fail(ErrorKind.TIMEOUT, f"DPS did not answer request {rid}")
        if msg.topic.startswith(REPLIES):
            return parse_reply(msg, rid)


def wait_secs(secs: int, deadline: int):
    if crypto.now_unix() + secs > deadline:
        fail(ErrorKind.TIMEOUT, "the registration did not finish before the flow's deadline")
    time.sleep_ms(secs * 1000)


def register_body(p: Params, registration_id: str) -> str:
    """The register request's body: {"registrationId", "payload"?}, or empty for MindConnect eu2."""
    if p.get("empty_register_body") == "true":
        return ""
    body = {"registrationId": registration_id}
    if p.has("payload"):
        try:
            body["payload"] = json.loads(p.get("payload"))
        except ValueError as e:
            fail(ErrorKind.INVALID_INPUT, f"parameter payload is not JSON: {e}")
    return compact(body)


def step(reply: Reply, op, registration_id: str):
    """What DPS says to one request: ("done", answer) or ("wait", operation id, seconds)."""
    answer = reply.body
    if reply.status in (200, 202):
        state = field(answer, "status", "")
        if state not in ("assigning", ""):
            return ("done", answer)
        return ("wait", field(answer, "operationId", ""), max(reply.retry_after, 2))
    if reply.status == 429:
        secs = max(reply.retry_after, 1)
        log.log(log.Level.WARN, f"DPS throttled '{registration_id}': waiting {secs} s as it asks")
        return ("wait", op, secs)
    code = field(answer, "errorCode", str(reply.status))
    why = field(answer, "message", "no reason given")
    kind = ErrorKind.REMOTE if reply.status >= 500 else ErrorKind.REFUSED
    fail(kind, f"DPS answered {reply.status} to '{registration_id}' (errorCode {code}: {why})")


def register_over_mqtt(p: Params, scope: str, registration_id: str, key, ttl: int, deadline: int) -> dict:
    """Register over MQTT, then poll the operation until the registration is done."""
    password = None
    if key is not None:
        resource = f"{scope}/registrations/{registration_id}"
        password = crypto.sas_token(resource, key, "registration", crypto.now_unix() + ttl)
    port = p.number("dps_port", 8883)
    if port > 65535:
        fail(ErrorKind.INVALID_INPUT, "dps_port is not a port")
    session = mqtt.Session.connect(
        mqtt.ConnectOptions(
            host=p.get("dps_host", "global.azure-devices-provisioning.net"),
            port=port,
            client_id=registration_id,
            username=f"{scope}/registrations/{registration_id}/api-version=2019-03-31",
            password=password,
            keep_alive_secs=60,
            clean_session=True,
            protocol=ProtocolVersion.MQTT311,
            tls=tls_options(p),
            connect_timeout_ms=30000,
        )
    )
    session.subscribe("$dps/registrations/res/#", 1)
    body = register_body(p, registration_id)
    rid, op = 0, None
    while True:
        rid += 1
        if op is None:
            topic, sent = f"$dps/registrations/PUT/iotdps-register/?$rid={rid}", body
        else:
            topic, sent = f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}", ""
        nxt = step(request(session, topic, sent, rid, deadline), op, registration_id)
        if nxt[0] == "done":
            session.disconnect()
            return nxt[1]
        _, op, secs = nxt
        wait_secs(secs, deadline)


def connection(p: Params, answer: dict, key, ttl: int) -> Connection:
    """The IoT Hub connection of an assigned registration."""
    state = answer.get("registrationState") or {}
    hub = field(state, "assignedHub", "")
    device = field(state, "deviceId", "")
    version = p.get("hub_api_version", "2021-04-12")
    port = p.number("hub_port", 8883)
    if port > 65535:
        fail(ErrorKind.INVALID_INPUT, "hub_port is not a port")
    if key is None:
        auth = Auth_ClientCertificate(ClientCertificate(p.required("certificate"), key_ref(p)))
        expires_at = None
    else:
        # The device key stays in the flow's own kv namespace, for `refresh`.
        kv.set(f"device-key/{device}", key.encode())
        expires_at = crypto.now_unix() + ttl
        auth = Auth_Password(crypto.sas_token(f"{hub}/devices/{device}", key, None, expires_at))
    return Connection(
        host=hub,
        port=port,
        client_id=device,
        username=f"{hub}/{device}/?api-version={version}",
        auth=auth,
        ca_file=p.get("ca_file"),
        server_name=None,
        alpn=[],
        protocol=ProtocolVersion.MQTT311,
        keep_alive_secs=60,
        attributes=[
            ("assigned-hub", hub),
            ("device-id", device),
            ("registration-id", field(state, "registrationId", "")),
            ("token-ttl-secs", str(ttl)),
        ],
        expires_at=expires_at,
    )


class WitWorld(wit_world.WitWorld):
    def onboard(self, params) -> Connection:
        p = Params(params)
        check_params(p)
        if p.has("transport") and p.get("transport") != "mqtt":
            fail(ErrorKind.UNSUPPORTED, "this Python flow registers over MQTT only; use azure-dps-rest for HTTPS")
        scope = p.required("id_scope")
        registration_id = p.get("registration_id")
        if registration_id is None:
            chain = certs.read_chain(p.required("certificate"))
            if not chain:
                fail(ErrorKind.INVALID_INPUT, "the certificate file is empty")
            registration_id = chain[0].subject_cn
        deadline = crypto.now_unix() + p.number("timeout_secs", 90)
        ttl = p.number("token_ttl_secs", 3600)
        key = device_key(p, registration_id)
        answer = register_over_mqtt(p, scope, registration_id, key, ttl, deadline)
        state = field(answer, "status", "")
        if state != "assigned":
            reg = answer.get("registrationState") or {}
            code = field(reg, "errorCode", "-")
            why = field(reg, "errorMessage", "no reason given")
            fail(ErrorKind.REFUSED, f"DPS registration of '{registration_id}' ended '{state}' (errorCode {code}: {why})")
        return connection(p, answer, key, ttl)

    def refresh(self, conn: Connection) -> Credentials:
        """A fresh hub SAS token (X.509 connections need nothing)."""
        if not isinstance(conn.auth, Auth_Password):
            return Credentials(None, None, None)
        attrs = dict(conn.attributes)
        device = attrs.get("device-id", "")
        stored = kv.get(f"device-key/{device}")
        if stored is None:
            fail(ErrorKind.NOT_FOUND, f"no device key for '{device}': onboard it again")
        ttl = number_or(attrs.get("token-ttl-secs", ""), 3600)
        expiry = crypto.now_unix() + ttl
        token = crypto.sas_token(f"{attrs.get('assigned-hub', '')}/devices/{device}", stored.decode(), None, expiry)
        return Credentials(conn.username, token, expiry)
