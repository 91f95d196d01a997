//! hutch's public gRPC API, package `hutch.v1`: generated message types, the `Agent` client
//! and server, and the encoded file-descriptor set for server reflection.
#![forbid(unsafe_code)]

/// Package `hutch.v1`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("hutch.v1");
}

/// The encoded `FileDescriptorSet` of every hutch proto file (and the well-known types they
/// import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hutch_descriptor.bin"));

/// What the controller serves: `hutch.v1.Controller` as in [`v1`], except that its watch
/// streams carry [`wire::PreEncoded`] events, encoded once and sent as the same bytes to
/// every watcher (clients decode them as [`v1::WatchEvent`]). The controller serves
/// [`wire::controller_server`], not `v1::controller_server`.
pub mod wire {
    use bytes::{Buf, BufMut, Bytes};
    use prost::encoding::{DecodeContext, WireType};

    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    mod generated {
        include!(concat!(env!("OUT_DIR"), "/wire/hutch.v1.rs"));
    }
    pub use generated::controller_server;

    /// A message already encoded: sent as its bytes, which clones share. Only ever sent
    /// (the controller's watch answers); decoding one keeps nothing, so it must never be an
    /// RPC's request type.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct PreEncoded(Bytes);

    impl PreEncoded {
        /// `message` encoded.
        pub fn of(message: &impl prost::Message) -> PreEncoded {
            PreEncoded(Bytes::from(message.encode_to_vec()))
        }

        /// The encoded bytes.
        pub fn bytes(&self) -> &Bytes {
            &self.0
        }
    }

    impl prost::Message for PreEncoded {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            buf.put_slice(&self.0);
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn encoded_len(&self) -> usize {
            self.0.len()
        }

        fn clear(&mut self) {
            self.0.clear();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::v1;
        use prost::Message;

        #[test]
        fn sent_as_encoded_and_read_back_as_the_event() {
            let event = v1::WatchEvent {
                revision: 42,
                container: Some(v1::Container {
                    name: "web-1".into(),
                    state: v1::ContainerState::Running as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let pre = PreEncoded::of(&event);
            assert_eq!(pre.encoded_len(), event.encoded_len());
            // What a server writes for it is what a client decodes as the event.
            let sent = pre.encode_to_vec();
            assert_eq!(v1::WatchEvent::decode(sent.as_slice()), Ok(event));
            // Clones share the bytes: encoded once, whatever the number of watchers.
            assert_eq!(pre.clone().bytes().as_ptr(), pre.bytes().as_ptr());
        }
    }
}
