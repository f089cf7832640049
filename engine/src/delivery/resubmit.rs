//! Safety Net resubmission (placeholder until the next step).

use std::rc::Rc;

use super::Delivery;

impl Delivery {
    /// Runs resubmission request `id` on this core's log.
    pub(super) async fn resubmit(self: Rc<Self>, id: u64) {
        let _ = id;
    }
}
