//! Budgets of batches: the worst case of every item is reserved at submission (refused with 402
//! when a budget of the key or its team cannot hold it), and settled item by item: each settled
//! item is charged what it cost and its worst case leaves the reservation.
//!
//! The reservation is an in-memory limiter ticket per batch (budgets only, no rate limits): on
//! each item, the held ticket is settled with the item's cost and a new one is taken for what is
//! still unsettled. After a restart the unsettled rest is no longer held (in process, budgets
//! resume from the usage ledger, where every settled item already is); items are still charged
//! as they settle. Items settled by another instance (sharing a Redis) are charged there without
//! touching this reservation, and a batch ended there is released here by the runner's sweep
//! ([`BatchBudgets::held`]), so the reservation never outlives its batch by more than a few
//! seconds (nor turns into spend when its lease lapses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rampart_limits::{Admission, Demand, Policy, Rates, ScopeLimits, Ticket, Used};
use uuid::Uuid;

use crate::admission::Limits;
use crate::error::ProxyError;
use crate::keydir::KeyDirectory;

/// The reservations of open batches.
#[derive(Debug)]
pub struct BatchBudgets {
    limits: Option<Limits>,
    directory: Option<Arc<KeyDirectory>>,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug)]
struct Held {
    policy: Arc<Policy>,
    ticket: Option<Ticket>,
    remaining: u64,
}

/// `policy` with its budgets only (no rates, no concurrency), or `None` without budgets.
fn budgets_only(policy: &Policy) -> Option<Arc<Policy>> {
    policy.narrowed(|s| ScopeLimits {
        rates: Rates::default(),
        ..s
    })
}

impl BatchBudgets {
    /// Reservations on `limits` (none: nothing is enforced); `directory` finds a key's policy
    /// for batches submitted before a restart.
    #[must_use]
    pub fn new(limits: Option<Limits>, directory: Option<Arc<KeyDirectory>>) -> Self {
        Self {
            limits,
            directory,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The prices budgets are charged at.
    #[must_use]
    pub fn prices(&self) -> Option<&Arc<rampart_ledger::pricing::PriceTable>> {
        self.limits.as_ref().map(|l| &l.prices)
    }

    /// Reserve `worst` micro-dollars for a batch under `policy`. Returns the ticket to hand to
    /// [`BatchBudgets::hold`] once the batch is stored (dropping it gives the reservation back).
    ///
    /// # Errors
    /// 402 when a budget cannot hold it; 503 when the limits backend is down (fail closed).
    pub async fn reserve(
        &self,
        policy: Option<&Arc<Policy>>,
        worst: u64,
    ) -> Result<Option<(Arc<Policy>, Ticket)>, ProxyError> {
        let (Some(limits), Some(policy)) = (&self.limits, policy) else {
            return Ok(None);
        };
        let Some(budgets) = budgets_only(policy) else {
            return Ok(None);
        };
        let demand = Demand {
            cost_micros: worst.max(1),
            ..Demand::default()
        };
        // A batch must fit whole: unlike a request, it may not overdraw a budget by its own
        // reservation (one atomic check and reserve, as it stood before it).
        match limits.limiter.admit_whole(&budgets, demand).await {
            Admission::Admitted(t) => Ok(Some((budgets, t))),
            Admission::Unchecked => Ok(None),
            Admission::Unavailable => Err(ProxyError::LimitsUnavailable),
            Admission::Rejected(r) => Err(ProxyError::OverBudget(Box::new(r))),
        }
    }

    /// Keep a stored batch's reservation until its items settle.
    pub fn hold(&self, batch_id: &str, reserved: Option<(Arc<Policy>, Ticket)>, worst: u64) {
        if let Some((policy, ticket)) = reserved {
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    batch_id.to_owned(),
                    Held {
                        policy,
                        ticket: Some(ticket),
                        remaining: worst,
                    },
                );
        }
    }

    /// Settle one item of `batch_id` (made by `key_id`): charge `cost`, release `worst`.
    pub async fn settle_item(&self, batch_id: &str, key_id: Option<Uuid>, worst: u64, cost: u64) {
        let Some(limits) = &self.limits else { return };
        let taken = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.get_mut(batch_id).map(|h| {
                h.remaining = h.remaining.saturating_sub(worst);
                (h.policy.clone(), h.ticket.take(), h.remaining)
            })
        };
        let (policy, ticket, remaining) = match taken {
            Some(t) => t,
            None => {
                // Not held here (submitted before a restart, or on another instance): charge
                // the cost without a reservation.
                let Some(policy) = key_id
                    .and_then(|k| self.directory.as_ref()?.policy_of(k))
                    .and_then(|p| budgets_only(&p))
                else {
                    return;
                };
                (policy, None, 0)
            }
        };
        let ticket = match ticket {
            Some(t) => Some(t),
            None => match limits.limiter.admit(&policy, Demand::default()).await {
                Admission::Admitted(t) => Some(t),
                _ => None,
            },
        };
        if let Some(t) = ticket {
            t.settle(Used {
                cost_micros: cost,
                ..Used::default()
            });
        }
        let next = if remaining > 0 {
            let demand = Demand {
                cost_micros: remaining,
                ..Demand::default()
            };
            match limits.limiter.admit(&policy, demand).await {
                Admission::Admitted(t) => Some(t),
                // Spent elsewhere meanwhile: the accepted batch runs on, charged as it settles.
                _ => None,
            }
        } else {
            None
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = held.get_mut(batch_id) {
            h.ticket = next;
        }
    }

    /// The batches whose reservations are held here.
    #[must_use]
    pub fn held(&self) -> Vec<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The batch ended: give back whatever is still reserved.
    pub fn release(&self, batch_id: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(batch_id);
    }
}
