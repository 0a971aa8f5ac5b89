//! The protobuf codec of `router.v1.PromptRouter`: tonic-prost's, except that a message that
//! does not decode gets the error of whoever sent it. tonic-prost answers every decoding
//! error with INTERNAL; a request that is not valid protobuf (bad UTF-8 in a string, a wrong
//! wire type, truncated or garbage bytes) is the caller's fault, so it is INVALID_ARGUMENT,
//! with prost's message naming the field.

use std::marker::PhantomData;

use prost::{DecodeError, Message};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use super::error::Error;
use crate::pb;

/// Who is at fault when a message of this type does not decode.
pub trait Undecodable: Message + Default {
    /// The error for it.
    fn undecodable(err: &DecodeError) -> Error;
}

impl Undecodable for pb::ConverseRequest {
    fn undecodable(err: &DecodeError) -> Error {
        Error::Undecodable(err.to_string())
    }
}

impl Undecodable for pb::FeedbackRequest {
    fn undecodable(err: &DecodeError) -> Error {
        Error::Undecodable(err.to_string())
    }
}

impl Undecodable for pb::ConverseResponse {
    fn undecodable(err: &DecodeError) -> Error {
        Error::UndecodableReply(err.to_string())
    }
}

impl Undecodable for pb::ConverseStreamEvent {
    fn undecodable(err: &DecodeError) -> Error {
        Error::UndecodableReply(err.to_string())
    }
}

impl Undecodable for pb::RouteResponse {
    fn undecodable(err: &DecodeError) -> Error {
        Error::UndecodableReply(err.to_string())
    }
}

impl Undecodable for pb::FeedbackResponse {
    fn undecodable(err: &DecodeError) -> Error {
        Error::UndecodableReply(err.to_string())
    }
}

/// The codec the generated server and client use (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct RouterCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RouterCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RouterCodec<T, U>
where
    T: Message + Send + 'static,
    U: Undecodable + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RouterDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RouterDecoder(PhantomData)
    }
}

/// Decodes `U` with prost, mapping a failure to `U`'s error.
#[derive(Debug)]
pub struct RouterDecoder<U>(PhantomData<U>);

impl<U: Undecodable> Decoder for RouterDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| U::undecodable(&e).into())
    }
}
