//! A pass-through gRPC codec for the timed kvtier client.
//!
//! While timing, the HTTP client sends a JSON body encoded beforehand and
//! reads Dynamo's answer without decoding it. For the gRPC side to do the same
//! work, [`RawCodec`] sends pre-encoded protobuf bytes and hands back the
//! response's bytes undecoded; the cross-check uses the generated client.

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The gRPC path of `RouterService.FindMatches`, for calls through [`RawCodec`].
pub const FIND_MATCHES_PATH: &str = "/kvtier.v1.RouterService/FindMatches";

/// A gRPC codec that sends pre-encoded protobuf bytes and hands back the
/// response's bytes undecoded: the timed gRPC client does what the timed HTTP
/// client does (send a prepared body, read the whole answer).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug)]
pub struct RawEncoder;

#[derive(Debug)]
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}
