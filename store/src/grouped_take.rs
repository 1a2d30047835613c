//! Point reads that arrive together are taken together.
//!
//! A cold dashboard is one row of one table, and under concurrent calls the cost of taking it
//! is mostly not the bytes: each take plans its own decode, and each of its reads (two per
//! dashboard) is a round trip through tokio's blocking pool (`pread` on a local store, a GET
//! on object storage), so that on the 1M-feature store a server pinned to one core spent half
//! its time switching threads. Requests therefore wait in one list, and up to `MAX_IN_FLIGHT`
//! callers at a time take everything waiting (at most `MAX_ROWS` rows) and hand each waiting
//! caller its rows. One caller alone takes its own row at once; 64 concurrent callers share a
//! few takes. No task of its own: whoever waits does the work, so a reader works from any
//! runtime, and a caller that gives up (a cancelled call) leaves the others to take alone.

use std::sync::Mutex;

use arrow_array::{RecordBatch, UInt32Array};
use tokio::sync::{oneshot, Semaphore};

use crate::error::{Result, StoreError};
use crate::taker::{sorted_unique, RowTaker};

/// Most rows in one shared take (a take's decode buffers grow with it).
const MAX_ROWS: usize = 256;
/// Takes running at once: enough to keep object storage's round trips overlapped, few enough
/// that requests queue behind them and share the next one.
const MAX_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<RecordBatch>>;

pub struct GroupedTaker {
    taker: RowTaker,
    waiting: Mutex<Vec<(Vec<u64>, Reply)>>,
    slots: Semaphore,
}

impl GroupedTaker {
    pub fn new(taker: RowTaker) -> Self {
        GroupedTaker { taker, waiting: Mutex::new(Vec::new()), slots: Semaphore::new(MAX_IN_FLIGHT) }
    }

    pub fn taker(&self) -> &RowTaker {
        &self.taker
    }

    /// The rows at `addresses`, in the order asked.
    pub async fn take(&self, addresses: Vec<u64>) -> Result<RecordBatch> {
        let (reply, mut answer) = oneshot::channel();
        self.lock_waiting().push((addresses.clone(), reply));
        loop {
            tokio::select! {
                biased;
                answered = &mut answer => return match answered {
                    Ok(rows) => rows,
                    // The caller that took this request gave up before answering: take alone.
                    Err(_) => self.alone(&addresses).await,
                },
                slot = self.slots.acquire() => {
                    let Ok(_slot) = slot else { return self.alone(&addresses).await };
                    let group = self.next_group();
                    if group.is_empty() {
                        // Someone else took this request: its answer is on the way.
                        drop(_slot);
                        return match answer.await {
                            Ok(rows) => rows,
                            Err(_) => self.alone(&addresses).await,
                        };
                    }
                    answer_group(&self.taker, group).await;
                }
            }
        }
    }

    async fn alone(&self, addresses: &[u64]) -> Result<RecordBatch> {
        in_order(&self.taker, &self.taker.take(addresses).await?, &sorted_unique(addresses), addresses)
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<u64>, Reply)>> {
        // A panic while holding the lock leaves a list of senders, still valid.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest waiting requests, up to `MAX_ROWS` rows (at least one request).
    fn next_group(&self) -> Vec<(Vec<u64>, Reply)> {
        let mut waiting = self.lock_waiting();
        let (mut rows, mut n) = (0, 0);
        for (addresses, _) in waiting.iter() {
            if n > 0 && rows + addresses.len() > MAX_ROWS {
                break;
            }
            rows += addresses.len();
            n += 1;
        }
        waiting.drain(..n).collect()
    }
}

async fn answer_group(taker: &RowTaker, group: Vec<(Vec<u64>, Reply)>) {
    let all: Vec<u64> = group.iter().flat_map(|(addresses, _)| addresses.iter().copied()).collect();
    let taken = sorted_unique(&all);
    match taker.take(&all).await {
        Ok(batch) => {
            for (addresses, reply) in group {
                let _ = reply.send(in_order(taker, &batch, &taken, &addresses));
            }
        }
        // One bad request must not fail the others: each takes alone, and gets its own error.
        Err(_) if group.len() > 1 => {
            for (addresses, reply) in group {
                let answer = match taker.take(&addresses).await {
                    Ok(batch) => in_order(taker, &batch, &sorted_unique(&addresses), &addresses),
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            if let Some((_, reply)) = group.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// The rows of `addresses` from `batch` (a take of `taker`), whose rows are those of `taken`
/// (sorted, unique).
fn in_order(taker: &RowTaker, batch: &RecordBatch, taken: &[u64], addresses: &[u64]) -> Result<RecordBatch> {
    rows_in_order(taker.table(), batch, taken, addresses)
}

fn rows_in_order(table: &str, batch: &RecordBatch, taken: &[u64], addresses: &[u64]) -> Result<RecordBatch> {
    let indices: Option<Vec<u32>> = addresses.iter().map(|a| taken.binary_search(a).ok().map(|i| i as u32)).collect();
    match indices {
        Some(indices) if batch.num_rows() == taken.len() => Ok(arrow_select::take::take_record_batch(batch, &UInt32Array::from(indices))?),
        _ => Err(StoreError::Corrupt { path: table.into(), reason: format!("a take of {} rows returned {}", taken.len(), batch.num_rows()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Array, UInt64Array};

    fn batch_of(values: &[u64]) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(UInt64Array::from(values.to_vec())) as arrow_array::ArrayRef)]).unwrap()
    }

    #[test]
    fn rows_come_back_in_the_order_asked_with_repeats() {
        let taken = sorted_unique(&[30, 10, 20, 10]);
        assert_eq!(taken, vec![10, 20, 30]);
        let batch = batch_of(&[100, 200, 300]);
        let out = rows_in_order("t", &batch, &taken, &[30, 10, 30]).unwrap();
        let v = out.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(v.values(), &[300, 100, 300]);
    }

    #[test]
    fn a_short_take_is_an_error_not_a_wrong_row() {
        let batch = batch_of(&[100]);
        assert!(rows_in_order("t", &batch, &[10, 20], &[20]).is_err());
        assert!(rows_in_order("t", &batch, &[10], &[20]).is_err());
    }
}
