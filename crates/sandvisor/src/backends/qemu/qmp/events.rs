//! The QMP events, decoded into [`Event`].

use serde::Deserialize;
use serde_json::Value;

/// A QMP event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The guest paused.
    Stop,
    /// The guest resumed.
    Resume,
    /// The guest or QEMU shut down.
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// Why.
        reason: String,
    },
    /// A device finished unplugging.
    DeviceDeleted {
        /// Its id, when it had one.
        device: Option<String>,
        /// Its QOM path.
        path: String,
    },
    /// A migration changed state.
    Migration {
        /// The new status.
        status: String,
    },
    /// The guest kernel panicked.
    GuestPanicked,
    /// Any other event.
    Other {
        /// Its name.
        name: String,
        /// Its data.
        data: Value,
    },
}

impl Event {
    pub(super) fn decode(name: String, data: Value) -> Event {
        #[derive(Deserialize)]
        struct Shutdown {
            guest: bool,
            reason: String,
        }
        #[derive(Deserialize)]
        struct DeviceDeleted {
            device: Option<String>,
            path: String,
        }
        #[derive(Deserialize)]
        struct Migration {
            status: String,
        }
        let typed = match name.as_str() {
            "STOP" => Some(Event::Stop),
            "RESUME" => Some(Event::Resume),
            "GUEST_PANICKED" => Some(Event::GuestPanicked),
            "SHUTDOWN" => serde_json::from_value::<Shutdown>(data.clone())
                .ok()
                .map(|s| Event::Shutdown {
                    guest: s.guest,
                    reason: s.reason,
                }),
            "DEVICE_DELETED" => serde_json::from_value::<DeviceDeleted>(data.clone())
                .ok()
                .map(|d| Event::DeviceDeleted {
                    device: d.device,
                    path: d.path,
                }),
            "MIGRATION" => serde_json::from_value::<Migration>(data.clone())
                .ok()
                .map(|m| Event::Migration { status: m.status }),
            _ => None,
        };
        typed.unwrap_or(Event::Other { name, data })
    }
}
