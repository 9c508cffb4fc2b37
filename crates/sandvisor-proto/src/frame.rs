//! Framing: a 4-byte big-endian length, then that many payload bytes.
//!
//! [`encode`], [`decode_header`] and [`decode`] are pure and shared by both
//! ends; [`read_frame`] and [`write_frame`] work on blocking streams (the
//! agent). The host's async client reads the header and payload itself and
//! calls the pure functions.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest payload accepted: 4 MiB. Exec output is sent in chunks far
/// below this; the limit only keeps a corrupt or hostile length from making
/// the reader allocate.
pub const MAX_FRAME_SIZE: usize = 4 << 20;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Errors from framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announced a payload over [`MAX_FRAME_SIZE`].
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// The message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
    /// The stream ended cleanly between frames.
    #[error("stream closed")]
    Closed,
    /// Reading or writing the stream failed.
    #[error("stream i/o failed")]
    Io(#[from] io::Error),
}

/// Encodes `msg` as one frame: header and payload.
///
/// # Errors
/// [`FrameError::Encode`] when serialisation fails, [`FrameError::TooLarge`]
/// when the payload would be over the limit.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg).map_err(FrameError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    let header = u32::try_from(len)
        .expect("len is at most MAX_FRAME_SIZE, which fits in u32")
        .to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&header);
    Ok(buf)
}

/// The payload length a header announces.
///
/// # Errors
/// [`FrameError::TooLarge`] over [`MAX_FRAME_SIZE`].
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    Ok(len)
}

/// Decodes a payload.
///
/// # Errors
/// [`FrameError::Malformed`] when it is not valid JSON for `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Malformed)
}

/// The request id a payload carries, if it is a JSON object with a numeric
/// `id`, even when the rest of it is not a valid message. Lets the agent tie
/// an error reply to the request that caused it.
pub fn peek_id(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(payload).ok().map(|m| m.id)
}

/// Reads one frame's payload from a blocking stream.
///
/// An oversized frame's payload is read and dropped in small pieces before
/// [`FrameError::TooLarge`] is returned, so the next call reads the next
/// frame.
///
/// # Errors
/// [`FrameError::Closed`] on end of stream before a header,
/// [`FrameError::TooLarge`], or [`FrameError::Io`] (an end of stream inside a
/// frame is `UnexpectedEof`).
pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = match decode_header(header) {
        Ok(len) => len,
        Err(err) => {
            let announced = u32::from_be_bytes(header) as u64;
            let skipped = io::copy(&mut r.take(announced), &mut io::sink())?;
            if skipped < announced {
                return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            return Err(err);
        }
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Writes `msg` as one frame, in one `write_all`, and flushes.
///
/// # Errors
/// See [`encode`]; [`FrameError::Io`] when writing fails.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentError, AgentMessage, HostMessage, Request, Response, PROTOCOL_VERSION};

    #[test]
    fn encode_decode_round_trip() {
        let msg = HostMessage {
            id: 42,
            request: Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        };
        let buf = encode(&msg).expect("encodes");
        let mut cursor = io::Cursor::new(buf);
        let payload = read_frame(&mut cursor).expect("one frame");
        assert_eq!(decode::<HostMessage>(&payload).expect("decodes"), msg);
        assert!(matches!(read_frame(&mut cursor), Err(FrameError::Closed)));
    }

    #[test]
    fn header_over_limit_is_refused() {
        let len = (MAX_FRAME_SIZE + 1) as u32;
        assert!(matches!(
            decode_header(len.to_be_bytes()),
            Err(FrameError::TooLarge { len: l, max: MAX_FRAME_SIZE }) if l == MAX_FRAME_SIZE + 1
        ));
        assert_eq!(
            decode_header((MAX_FRAME_SIZE as u32).to_be_bytes()).expect("at the limit"),
            MAX_FRAME_SIZE
        );
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_read() {
        // An oversized frame whose body is present: skipped, stream stays in
        // step.
        let big = MAX_FRAME_SIZE + 10;
        let mut stream = (big as u32).to_be_bytes().to_vec();
        stream.resize(HEADER_LEN + big, b'x');
        let next = HostMessage {
            id: 7,
            request: Request::Check,
        };
        stream.extend(encode(&next).expect("encodes"));
        let mut cursor = io::Cursor::new(stream);
        assert!(matches!(
            read_frame(&mut cursor),
            Err(FrameError::TooLarge { .. })
        ));
        let payload = read_frame(&mut cursor).expect("next frame");
        assert_eq!(decode::<HostMessage>(&payload).expect("decodes"), next);
    }

    #[test]
    fn oversized_header_without_body_does_not_allocate_it() {
        // 4 GiB - 1 announced, nothing behind it: an error, not an
        // allocation of 4 GiB.
        let mut cursor = io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(matches!(read_frame(&mut cursor), Err(FrameError::Io(_))));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut buf = encode(&HostMessage {
            id: 1,
            request: Request::Check,
        })
        .expect("encodes");
        buf.truncate(buf.len() - 2);
        let mut cursor = io::Cursor::new(buf);
        match read_frame(&mut cursor) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected an eof error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads() {
        for payload in [
            &b"not json"[..],
            br#"{"id": 3}"#,
            br#"{"id": 3, "type": "no_such_request"}"#,
            br#"{"id": "x", "type": "check"}"#,
            br#"[]"#,
        ] {
            assert!(
                matches!(
                    decode::<HostMessage>(payload),
                    Err(FrameError::Malformed(_))
                ),
                "{:?} should be malformed",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn peek_id_finds_the_id_of_a_bad_request() {
        assert_eq!(peek_id(br#"{"id": 3, "type": "no_such_request"}"#), Some(3));
        assert_eq!(peek_id(br#"{"type": "check"}"#), None);
        assert_eq!(peek_id(b"\xff\xfe"), None);
    }

    #[test]
    fn error_replies_round_trip() {
        let msg = AgentMessage::Reply {
            id: Some(9),
            result: Err(AgentError::VersionMismatch { host: 2, agent: 1 }),
        };
        let buf = encode(&msg).expect("encodes");
        let back: AgentMessage = decode(&buf[HEADER_LEN..]).expect("decodes");
        assert_eq!(back, msg);
        let ok = AgentMessage::Reply {
            id: Some(1),
            result: Ok(Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                features: vec![crate::FEATURE_EXEC_IO.into()],
            }),
        };
        let buf = encode(&ok).expect("encodes");
        assert_eq!(
            decode::<AgentMessage>(&buf[HEADER_LEN..]).expect("decodes"),
            ok
        );
    }
}
