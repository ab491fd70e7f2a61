//! Which backend answers a call. Whoever assembles a run registers a backend per device (the
//! local engine for `cpu`, an HTTP client per endpoint) and one for tools; the router sends
//! each call to the one for its device. It names no backend kind itself, so the scheduler's
//! crate links no model or sandbox code.

use std::collections::HashMap;
use std::sync::Arc;

use joule_call::{Backend, Call, CallError, CallFuture, Cancel, OnTokens, Site};

#[derive(Default, Clone)]
pub struct Router {
    devices: HashMap<String, Arc<dyn Backend>>,
    tools: Option<Arc<dyn Backend>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Model calls for `device` (a local device id or an endpoint name) go to `backend`.
    pub fn with_device(mut self, device: &str, backend: Arc<dyn Backend>) -> Self {
        self.devices.insert(device.to_string(), backend);
        self
    }

    /// Tool calls go to `backend`.
    pub fn with_tools(mut self, backend: Arc<dyn Backend>) -> Self {
        self.tools = Some(backend);
        self
    }

    /// Whether model calls for `device` have somewhere to go.
    pub fn serves(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }
}

impl Backend for Router {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        let backend = match call {
            Call::Tool(_) => self.tools.as_ref().ok_or_else(|| {
                CallError::permanent("tool calls are not available to this run")
            }),
            Call::Llm(c) => self.devices.get(&c.device).ok_or_else(|| {
                CallError::permanent(format!(
                    "no backend for device `{}`: it is neither a local device of this joule nor a configured endpoint",
                    c.device
                ))
            }),
        };
        match backend {
            Ok(b) => b.call(site, call, cancel, on_tokens),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
