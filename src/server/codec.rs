//! The protobuf codec of `router.v1.PromptRouter`: tonic-prost's, except that a message that
//! does not decode gets the status of whoever sent it. tonic-prost answers every decoding
//! error with INTERNAL; a request that is not valid protobuf (bad UTF-8 in a string, a wrong
//! wire type, truncated or garbage bytes) is the caller's fault, so it is INVALID_ARGUMENT,
//! with prost's message naming the field.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::pb;

/// Who is at fault when a message of this type does not decode.
pub trait Undecodable: Message + Default {
    /// The status code for it.
    const CODE: Code;
}

impl Undecodable for pb::ConverseRequest {
    const CODE: Code = Code::InvalidArgument;
}

impl Undecodable for pb::ConverseResponse {
    const CODE: Code = Code::Internal;
}

impl Undecodable for pb::ConverseStreamEvent {
    const CODE: Code = Code::Internal;
}

impl Undecodable for pb::RouteResponse {
    const CODE: Code = Code::Internal;
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

/// Decodes `U` with prost, mapping a failure to `U::CODE`.
#[derive(Debug)]
pub struct RouterDecoder<U>(PhantomData<U>);

impl<U: Undecodable> Decoder for RouterDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::new(U::CODE, format!("undecodable message: {e}")))
    }
}
