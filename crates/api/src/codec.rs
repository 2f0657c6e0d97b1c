//! The protobuf codec of every generated client and server: tonic-prost's, with a smaller first
//! buffer. tonic gives each call an encode buffer of that size (and a decode buffer for what it
//! reads) and keeps it for the whole call; with the default 8 KiB, the two long-lived streams of
//! every connected agent (Session and Assignments) held 16 KiB each, 16 MB over 1000 agents,
//! though most of their messages are far smaller. The buffers still grow to the largest message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// Encoded bytes of a stream's messages gathered before they are handed to HTTP/2 (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic-prost's codec with [`BUFFER_BYTES`] buffers (set as `codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    kinds: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec { kinds: PhantomData }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
