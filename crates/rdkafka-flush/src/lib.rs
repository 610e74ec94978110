//! `rd_kafka_flush` with a timeout, for an rdkafka [`BaseProducer`].
//!
//! librdkafka sends a partition's batch once `linger.ms` has passed since
//! its first record, except while a `flush` is running: then every batch
//! goes out at once. A processor that waits for its records before it
//! commits a transaction wants exactly that, so that it can linger long
//! (large batches, less work per record for itself and the broker) without
//! every commit waiting out the linger.
//!
//! rdkafka 0.39's `Producer::flush` calls `rd_kafka_flush` with a timeout
//! of 0, which lifts the linger only for the instant of the call, and
//! then sleeps in steps of up to 100 ms. This calls it with the timeout
//! asked for, which lifts the linger for the whole wait.

use std::time::Duration;

use rdkafka::bindings::{rd_kafka_flush, rd_kafka_resp_err_t};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// Waits up to `timeout` until `producer` holds no record (each delivered,
/// or failed with its report waiting to be served), sending every batch
/// at once meanwhile whatever `linger.ms` says; `true` when none is left.
///
/// [`BaseProducer`] takes delivery reports as events, so this only waits
/// on librdkafka's record count: it serves no report. A failed record is
/// counted until its report is served (`BaseProducer::poll`), so a caller
/// that may see failures waits in short slices and polls between them.
pub fn flush<C: ProducerContext>(producer: &BaseProducer<C>, timeout: Duration) -> bool {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `native_ptr` is the producer's `rd_kafka_t`, which lives as
    // long as `producer` does, and `producer` is borrowed for the whole
    // call. librdkafka's handle is thread-safe, and rdkafka.h says of
    // `rd_kafka_flush` that with `RD_KAFKA_EVENT_DR` enabled (how rdkafka
    // configures a BaseProducer) it does not call `rd_kafka_poll` but only
    // waits for the message count to reach zero: it serves no queue that
    // the rdkafka crate serves, so it runs no callback of the crate's.
    let err = unsafe { rd_kafka_flush(producer.client().native_ptr(), ms) };
    err == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}
