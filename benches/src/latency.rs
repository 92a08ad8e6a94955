//! Hand-off latency in the running pipeline: from the assembler publishing a frame to an external consumer,
//! asleep in its wait for the next frame, awake with it.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use detector::k2;
use detector::sim::{SimConfig, Simulator};
use shm_protocol::consumer::{ConsumerError, Delivery, Subscription};

use crate::pipeline::Pipeline;

/// Latencies in µs (published_ns, taken just before the frame is published, to the consumer's clock reading
/// after its wait returned), one per frame the consumer saw, for `frames` frames sent at `fps`.
pub fn consumer_wake_us(p: &mut Pipeline, fps: f64, frames: u64) -> anyhow::Result<Vec<f64>> {
    let mut sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossy)?;
    let cfg = SimConfig { port_base: p.port_base, frames, fps: Some(fps), mode: k2::IS, ..Default::default() };
    let sim = Simulator::new(cfg)?;
    std::thread::scope(|s| -> anyhow::Result<Vec<f64>> {
        let consumer = s.spawn(move || -> anyhow::Result<Vec<f64>> {
            let mut lat = Vec::with_capacity(frames as usize);
            loop {
                match sub.next_info(Some(Duration::from_secs(2))) {
                    Ok(info) => {
                        let now = shm_protocol::pipeline::now_ns();
                        lat.push(now.saturating_sub(info.header.published_ns) as f64 / 1e3);
                        if lat.len() as u64 >= frames {
                            return Ok(lat);
                        }
                    }
                    Err(ConsumerError::Timeout) => return Ok(lat),
                    Err(e) => return Err(e.into()),
                }
            }
        });
        sim.run(&AtomicBool::new(false))?;
        consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?
    })
}
