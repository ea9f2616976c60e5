//! One client connection's network side, as rumqttd keeps it: the two halves of the socket, the
//! bytes read and not yet parsed, the packets queued for the client (written in one go, so a
//! commit that answers many publishes costs one write), and the packet size limit.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, PubAck};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One client's socket and buffers.
pub(super) struct Network<R, W> {
    pub(super) reader: R,
    pub(super) writer: W,
    /// Bytes read and not yet parsed into packets.
    pub(super) read: BytesMut,
    /// Packets queued for the client, written by [`Network::flush`].
    pub(super) out: BytesMut,
    /// The largest packet accepted; a larger one closes the connection.
    max_packet: usize,
}

/// Why no first packet could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    Eof,
    Io(std::io::Error),
    Codec(CodecError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "the connection closed"),
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Codec(e) => write!(f, "{e:?}"),
        }
    }
}

impl<R: AsyncReadExt + Unpin, W: AsyncWriteExt + Unpin> Network<R, W> {
    pub(super) fn new(reader: R, writer: W, max_packet: usize) -> Self {
        Network {
            reader,
            writer,
            read: BytesMut::with_capacity(4096),
            out: BytesMut::new(),
            max_packet,
        }
    }

    /// Read until one whole packet has arrived (the CONNECT).
    pub(super) async fn read_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            // rumqttc's 3.1.1 codec half-parses MQTT 5 CONNECTs; answer them by their level
            // instead.
            if let Some(level) = connect_protocol_level(&self.read).filter(|l| *l != 4) {
                return Err(ReadError::Codec(CodecError::InvalidProtocolLevel(level)));
            }
            match Packet::read(&mut self.read, self.max_packet) {
                Ok(packet) => return Ok(packet),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => return Err(ReadError::Codec(e)),
            }
            match self.reader.read_buf(&mut self.read).await {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// The next complete packet among the bytes read, if one is there.
    pub(super) fn next_packet(&mut self) -> Result<Option<Packet>, CodecError> {
        match Packet::read(&mut self.read, self.max_packet) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write the queued packets; false when the connection broke.
    pub(super) async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let written =
            self.writer.write_all(&self.out).await.is_ok() && self.writer.flush().await.is_ok();
        self.out.clear();
        written
    }

    /// Write one packet now, ahead of anything queued (a CONNACK); false when that failed.
    pub(super) async fn send_now(&mut self, packet: Packet) -> bool {
        let mut out = BytesMut::new();
        if packet.write(&mut out, usize::MAX).is_err() {
            return false;
        }
        self.writer.write_all(&out).await.is_ok() && self.writer.flush().await.is_ok()
    }
}

/// The protocol level of the CONNECT at the start of `buf`, once enough of it has arrived.
fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let name_len = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]) as usize;
    buf.get(i + 2 + name_len).copied()
}

/// PUBACK for QoS 1, PUBREC for QoS 2 (the client then releases it), nothing for QoS 0.
pub(super) fn queue_ack(out: &mut BytesMut, qos: QoS, pkid: u16) {
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => queue_packet(out, Packet::PubAck(PubAck::new(pkid))),
        QoS::ExactlyOnce => {
            let rec = rumqttc::mqttbytes::v4::PubRec::new(pkid);
            queue_packet(out, Packet::PubRec(rec))
        }
    }
}

/// Encode `packet` at the end of `out`. A packet the codec cannot encode is left out with a
/// log line (the packets queued here are built by this server and always encode).
pub(super) fn queue_packet(out: &mut BytesMut, packet: Packet) {
    let mark = out.len();
    if let Err(e) = packet.write(out, usize::MAX) {
        out.truncate(mark);
        tracing::warn!("an MQTT packet for a local client could not be encoded: {e:?}");
    }
}

/// The counting cause of a codec error.
pub(super) fn malformed_cause(e: &CodecError) -> &'static str {
    match e {
        CodecError::PayloadSizeLimitExceeded(_) => "packet too large",
        _ => "malformed packet",
    }
}
