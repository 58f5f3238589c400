//! [`FlatProstCodec`]: the gRPC codec of every kvtier service and client.
//!
//! It encodes as `tonic_prost::ProstCodec` does, and decodes from the whole
//! message as one contiguous [`Bytes`] instead of through tonic's `DecodeBuf`
//! over a `BytesMut`. Same bytes on the wire, same messages out; the
//! difference is the cost of a large packed field. `FindMatches` and `Route`
//! by token ids carry a prompt as `repeated uint32` (tens of thousands of
//! varints); through `DecodeBuf` every varint pays a `BytesMut::advance`, and
//! decoding took more than half of the router's CPU per query by token ids.
//! Taking the message out of the receive buffer is zero-copy (`split_to` +
//! `freeze`), `bytes` fields stay zero-copy slices of it, and advancing a
//! `Bytes` is two adds.
//!
//! Tested through every gRPC test of the workspace: all generated clients and
//! servers use it (tonic keeps `DecodeBuf`'s constructor private, so there is
//! no unit test apart from a real call).

use std::marker::PhantomData;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// A prost codec that decodes from one contiguous buffer; see the module docs.
#[derive(Debug, Clone)]
pub struct FlatProstCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for FlatProstCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for FlatProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = FlatProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        FlatProstDecoder {
            _message: PhantomData,
        }
    }
}

/// Decodes `U` from the whole message at once.
#[derive(Debug, Clone)]
pub struct FlatProstDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for FlatProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message: Bytes = buf.copy_to_bytes(buf.remaining());
        // As tonic-prost: a message that does not parse is INTERNAL
        // (https://github.com/grpc/grpc/blob/master/doc/statuscodes.md).
        U::decode(message)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}
