//! Producing through a librdkafka topic handle looked up once, for an
//! rdkafka [`BaseProducer`].
//!
//! rdkafka 0.39's `BaseProducer::send` names the record's topic: it copies
//! the name into a `CString` and passes it to `rd_kafka_producev`, which
//! looks the topic up by that name for every record (`rd_kafka_topic_new0`:
//! the client's write lock, a scan of its topics, a reference taken and
//! dropped again). A [`Topic`] holds librdkafka's handle of one topic, taken
//! once, and [`Topic::produce`] passes it instead (`RD_KAFKA_V_RKT`), so
//! the topic's name is neither copied nor looked up per record. Everything
//! else is what `send` does: the same call, the key, value and headers
//! copied by librdkafka (`RD_KAFKA_MSG_F_COPY`, `rd_kafka_header_add` with
//! each name's length), the partitioner of the producer's configuration
//! when no partition is given.

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings::{
    rd_kafka_header_add, rd_kafka_headers_destroy, rd_kafka_headers_new, rd_kafka_headers_t,
    rd_kafka_producev, rd_kafka_topic_destroy, rd_kafka_topic_new, rd_kafka_topic_t,
    rd_kafka_vtype_t, RD_KAFKA_MSG_F_COPY,
};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// librdkafka's handle of one topic of a producer, taken once and
/// released when dropped. It keeps the producer alive: librdkafka's
/// topic handles must not outlive their client.
pub struct Topic<C: ProducerContext<DeliveryOpaque = ()>> {
    rkt: NonNull<rd_kafka_topic_t>,
    name: Box<str>,
    producer: Arc<BaseProducer<C>>,
}

// SAFETY: librdkafka's topic handles are thread-safe (its topic object is
// reference-counted and locked inside); the handle is used only through
// librdkafka's own functions, and the producer it belongs to is `Send` and
// `Sync` whenever its context is.
unsafe impl<C: ProducerContext<DeliveryOpaque = ()> + Send + Sync> Send for Topic<C> {}
// SAFETY: as for `Send`: no method changes the handle itself.
unsafe impl<C: ProducerContext<DeliveryOpaque = ()> + Send + Sync> Sync for Topic<C> {}

impl<C: ProducerContext<DeliveryOpaque = ()>> Topic<C> {
    /// The handle of `name` for `producer`, with the producer's default
    /// topic configuration (what `send` uses). `None` if `name` holds a NUL
    /// byte or librdkafka refuses it.
    #[must_use]
    pub fn new(producer: &Arc<BaseProducer<C>>, name: &str) -> Option<Self> {
        let cname = CString::new(name).ok()?;
        // SAFETY: `native_ptr` is the producer's `rd_kafka_t`, alive while
        // `producer` is (this handle keeps a clone of it); `cname` is a
        // NUL-terminated string that librdkafka copies; a null
        // configuration means the client's default topic configuration.
        let rkt = unsafe {
            rd_kafka_topic_new(
                producer.client().native_ptr(),
                cname.as_ptr(),
                ptr::null_mut(),
            )
        };
        Some(Topic {
            rkt: NonNull::new(rkt)?,
            name: name.into(),
            producer: Arc::clone(producer),
        })
    }

    /// The topic's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a record for this topic, as `BaseProducer::send` does: to
    /// `partition`, or to the one the producer's partitioner picks for
    /// `key`; `timestamp` in milliseconds, or the time of the call.
    ///
    /// # Errors
    ///
    /// librdkafka's refusal (`QueueFull` among others): nothing was queued,
    /// and the call may be made again.
    pub fn produce<'h>(
        &self,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<(), RDKafkaErrorCode> {
        fn parts(b: Option<&[u8]>) -> (*mut c_void, usize) {
            b.map_or((ptr::null_mut(), 0), |b| {
                (b.as_ptr() as *mut c_void, b.len())
            })
        }
        let (value_ptr, value_len) = parts(value);
        let (key_ptr, key_len) = parts(key);
        // A record without headers gets no list (null), as from `send`; the
        // list is made at the first header (`len` only sizes it).
        let capacity = headers.len();
        let mut hdrs: *mut rd_kafka_headers_t = ptr::null_mut();
        for (name, v) in headers {
            if hdrs.is_null() {
                // SAFETY: `rd_kafka_headers_new` returns a new, empty
                // headers list owned by the caller (it aborts rather than
                // return null).
                hdrs = unsafe { rd_kafka_headers_new(capacity) };
            }
            // SAFETY: `hdrs` is the list made above; librdkafka copies the
            // name and the value, each given with its length (a Rust
            // string needs no NUL), and fails only for a read-only list.
            unsafe {
                rd_kafka_header_add(
                    hdrs,
                    name.as_ptr().cast(),
                    name.len().cast_signed(),
                    v.as_ptr().cast(),
                    v.len().cast_signed(),
                );
            }
        }
        // SAFETY: the same call as rdkafka's `BaseProducer::send`, with the
        // topic handle (`RD_KAFKA_VTYPE_RKT`) in place of its name:
        // `native_ptr` is the `rd_kafka_t` this handle was made for, alive
        // while `self.producer` is; each variadic argument has the C type
        // rdkafka.h's `RD_KAFKA_V_*` macro gives it; key and value are
        // copied before the call returns (`RD_KAFKA_MSG_F_COPY`). The
        // opaque is null: a delivery report hands it to
        // `C::DeliveryOpaque::from_ptr`, which for `()` reads nothing.
        // On success librdkafka owns `hdrs` (if any); on failure the caller
        // still does, and it is destroyed below.
        let err = unsafe {
            rd_kafka_producev(
                self.producer.client().native_ptr(),
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                self.rkt.as_ptr(),
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                partition.unwrap_or(-1),
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                RD_KAFKA_MSG_F_COPY,
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                value_ptr,
                value_len,
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                ptr::null_mut::<c_void>(),
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_TIMESTAMP,
                timestamp.unwrap_or(0),
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                hdrs,
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::NoError {
            Ok(())
        } else {
            if !hdrs.is_null() {
                // SAFETY: the call failed, so `hdrs` is still ours, and it
                // is not used after this.
                unsafe { rd_kafka_headers_destroy(hdrs) };
            }
            Err(code)
        }
    }
}

impl<C: ProducerContext<DeliveryOpaque = ()>> Drop for Topic<C> {
    fn drop(&mut self) {
        // SAFETY: the handle was taken in `new` and is given back once; the
        // producer (`self.producer`, dropped after this) is still alive.
        unsafe { rd_kafka_topic_destroy(self.rkt.as_ptr()) };
    }
}

impl<C: ProducerContext<DeliveryOpaque = ()>> std::fmt::Debug for Topic<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
