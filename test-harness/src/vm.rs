//! One worker's VM: a wasmtime instance of the filter and the host's view of its contexts.
//!
//! The call order follows Envoy: `_initialize`, `proxy_on_context_create(root, 0)`,
//! `proxy_on_vm_start`, `proxy_on_configure`; then per request `proxy_on_context_create(id, root)`,
//! the request and response callbacks, and `proxy_on_done` / `proxy_on_log` / `proxy_on_delete`.
//! Every call runs on a fresh fuel budget so its cost can be read back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Instance, Linker, Memory, Store, TypedFunc, WasmParams, WasmResults};

use crate::abi::{Action, LogLevel};
use crate::error::{FilterTrap, HarnessError};
use crate::filter::Filter;
use crate::host::{lock, HostOptions, SharedState};
use crate::http_call::{HttpCall, HttpCallResponse};
use crate::logs::{Captured, LogLine};
use crate::stream::{HeaderMap, HttpStream, RequestOutcome};
use crate::{hostcalls, wasi};

/// How many log lines a trap report carries.
const TRAP_LOG_LINES: usize = 20;

/// The host-side state of one VM, reachable from every host call.
pub(crate) struct VmState {
    pub(crate) index: usize,
    pub(crate) options: Arc<HostOptions>,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) root_context_id: u32,
    /// The context host calls act on (`proxy_set_effective_context` changes it).
    pub(crate) effective_context: u32,
    pub(crate) streams: BTreeMap<u32, HttpStream>,
    pub(crate) plugin_configuration: Vec<u8>,
    pub(crate) captured: Captured,
    pub(crate) properties: HashMap<Vec<String>, Vec<u8>>,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick_nanos: Option<u64>,
    pub(crate) http_calls: BTreeMap<u32, HttpCall>,
    pub(crate) last_http_token: u32,
    /// The answer being delivered, only during `proxy_on_http_call_response` (None on failure).
    pub(crate) call_response: Option<HttpCallResponse>,
    pub(crate) rng: u64,
}

/// A request as a client sends it, for [`Vm::send_request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Headers, pseudo-headers first.
    pub headers: Vec<(String, String)>,
    /// The body; `None` ends the stream with the headers.
    pub body: Option<Vec<u8>>,
    /// Deliver the body in chunks of this many bytes (`None`: one chunk).
    pub chunk_size: Option<usize>,
    /// Trailers; non-empty trailers end the stream instead of the body.
    pub trailers: Vec<(String, String)>,
}

impl Request {
    /// A request with `:method`, `:path`, `:authority` and `:scheme`.
    #[must_use]
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
                (":authority".into(), "localhost".into()),
                (":scheme".into(), "http".into()),
            ],
            ..Request::default()
        }
    }

    /// A GET request.
    #[must_use]
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A POST request with a body.
    #[must_use]
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Delivers the body in chunks of `size` bytes.
    #[must_use]
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }

    /// Adds a trailer.
    #[must_use]
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What [`Vm::send_request`] returns: the context it used and where the request ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The HTTP context id (for follow-ups: callouts, response callbacks, [`Vm::finish`]).
    pub context_id: u32,
    /// Where the request stands.
    pub outcome: RequestOutcome,
}

/// How often one export was called and the fuel those calls used, summed ([`Vm::fuel_by_export`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportFuel {
    /// Calls into the export.
    pub calls: u64,
    /// Fuel (≈ wasm instructions) they used.
    pub fuel: u64,
}

impl ExportFuel {
    fn add(&mut self, other: ExportFuel) {
        self.calls = self.calls.saturating_add(other.calls);
        self.fuel = self.fuel.saturating_add(other.fuel);
    }
}

/// One worker's instance of the filter.
pub struct Vm {
    store: Store<VmState>,
    instance: Instance,
    failed: Option<String>,
    next_context_id: u32,
    fuel_total: u64,
    last_call_fuel: u64,
    /// Calls and fuel by export name: what each callback of a request costs.
    fuel_by_export: BTreeMap<String, ExportFuel>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("index", &self.store.data().index)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub(crate) fn start(
        filter: &Filter,
        options: Arc<HostOptions>,
        shared: Arc<SharedState>,
        index: usize,
    ) -> Result<Vm, HarnessError> {
        let mut linker: Linker<VmState> = Linker::new(filter.engine());
        hostcalls::add_to_linker(&mut linker).map_err(|e| HarnessError::Host(e.to_string()))?;
        wasi::add_to_linker(&mut linker).map_err(|e| HarnessError::Host(e.to_string()))?;
        // gRPC and the rest of WASI are not hosted: a filter may import them but calling one traps
        // with a message naming the import.
        linker.define_unknown_imports_as_traps(filter.module()).map_err(|e| HarnessError::Host(e.to_string()))?;

        let mut properties = options.properties.clone();
        for (name, value) in [
            ("plugin_name", options.plugin_name.as_str()),
            ("plugin_root_id", options.root_id.as_str()),
            ("plugin_vm_id", options.vm_id.as_str()),
        ] {
            properties.entry(vec![name.to_owned()]).or_insert_with(|| value.as_bytes().to_vec());
        }
        let state = VmState {
            index,
            rng: options.random_seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            options,
            shared,
            memory: None,
            alloc: None,
            root_context_id: 1,
            effective_context: 1,
            streams: BTreeMap::new(),
            plugin_configuration: Vec::new(),
            captured: Captured::default(),
            properties,
            tick_period_ms: 0,
            next_tick_nanos: None,
            http_calls: BTreeMap::new(),
            last_http_token: 0,
            call_response: None,
        };
        let mut store = Store::new(filter.engine(), state);
        store.set_fuel(store.data().options.fuel_per_call).map_err(|e| HarnessError::Host(e.to_string()))?;
        let instance =
            linker.instantiate(&mut store, filter.module()).map_err(|e| HarnessError::Instantiate(format!("{e:?}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        if memory.is_none() {
            return Err(HarnessError::Abi("the module exports no `memory`".into()));
        }
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        if alloc.is_none() {
            return Err(HarnessError::Abi("the module exports neither proxy_on_memory_allocate nor malloc".into()));
        }
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;

        let mut vm = Vm {
            store,
            instance,
            failed: None,
            next_context_id: 2,
            fuel_total: 0,
            last_call_fuel: 0,
            fuel_by_export: BTreeMap::new(),
        };
        let root = vm.root_context_id();
        // The SDK's `main!` exports `_initialize` (a reactor); a command module has `_start`.
        if vm.has_export("_initialize") {
            vm.call::<(), ()>("_initialize", root, ())?;
        } else if vm.has_export("_start") {
            vm.call::<(), ()>("_start", root, ())?;
        }
        vm.call::<(i32, i32), ()>("proxy_on_context_create", root, (root as i32, 0))?;
        let size = len_i32(vm.store.data().options.vm_configuration.len());
        // A callback the filter does not export answers what Envoy assumes: true / Continue.
        let started: i32 = vm.call("proxy_on_vm_start", root, (root as i32, size))?.unwrap_or(1);
        if started == 0 {
            return Err(HarnessError::VmStartRejected { logs: vm.logs().to_vec() });
        }
        Ok(vm)
    }

    /// Which worker this VM plays (0, 1, ... in start order).
    #[must_use]
    pub fn index(&self) -> usize {
        self.store.data().index
    }

    /// The root context's id.
    #[must_use]
    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_context_id
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_export(&mut self.store, name).is_some()
    }

    /// Calls an export as Envoy does: effective context set, fresh fuel, trap reported with the
    /// VM's last logs. A callback the filter does not export answers Envoy's default.
    fn call<P, R>(&mut self, name: &str, context_id: u32, params: P) -> Result<Option<R>, HarnessError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        if let Some(reason) = &self.failed {
            return Err(HarnessError::VmFailed(reason.clone()));
        }
        if !self.has_export(name) {
            return Ok(None);
        }
        let func = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| HarnessError::Abi(format!("export {name}: {e}")))?;
        self.store.data_mut().effective_context = context_id;
        let budget = self.store.data().options.fuel_per_call;
        self.store.set_fuel(budget).map_err(|e| HarnessError::Host(e.to_string()))?;
        let result = func.call(&mut self.store, params);
        let left = self.store.get_fuel().unwrap_or(0);
        self.last_call_fuel = budget.saturating_sub(left);
        self.fuel_total = self.fuel_total.saturating_add(self.last_call_fuel);
        let used = ExportFuel { calls: 1, fuel: self.last_call_fuel };
        match self.fuel_by_export.get_mut(name) {
            Some(sum) => sum.add(used),
            None => {
                self.fuel_by_export.insert(name.to_owned(), used);
            }
        }
        result.map(Some).map_err(|error| self.trap(name, &error))
    }

    fn trap(&mut self, call: &str, error: &wasmtime::Error) -> HarnessError {
        let exit_code = error.downcast_ref::<wasi::ProcExit>().map(|e| e.0);
        let message = error.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ");
        let captured = &self.store.data().captured;
        let trap = FilterTrap {
            vm: self.index(),
            call: call.to_owned(),
            message,
            exit_code,
            last_logs: captured.tail(TRAP_LOG_LINES),
            stderr: String::from_utf8_lossy(&captured.stderr).into_owned(),
        };
        // A trapped VM is dead in Envoy too: its state may be half-updated.
        self.failed = Some(format!("{call}: {}", trap.message));
        trap.into()
    }

    /// Delivers the plugin configuration (`proxy_on_configure`); `false` means Envoy would reject it.
    ///
    /// # Errors
    /// A trap.
    pub fn configure(&mut self, configuration: &[u8]) -> Result<bool, HarnessError> {
        let root = self.root_context_id();
        self.store.data_mut().plugin_configuration = configuration.to_vec();
        let size = len_i32(configuration.len());
        let accepted: i32 = self.call("proxy_on_configure", root, (root as i32, size))?.unwrap_or(1);
        Ok(accepted != 0)
    }

    /// Creates an HTTP context (`proxy_on_context_create(id, root)`), as Envoy does per request.
    ///
    /// # Errors
    /// A trap (the SDK panics if the root context cannot make HTTP contexts).
    pub fn create_http_context(&mut self) -> Result<u32, HarnessError> {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(2);
        self.store.data_mut().streams.insert(id, HttpStream::default());
        let root = self.root_context_id();
        self.call::<(i32, i32), ()>("proxy_on_context_create", id, (id as i32, root as i32))?;
        Ok(id)
    }

    fn stream_mut(&mut self, context_id: u32) -> Result<&mut HttpStream, HarnessError> {
        self.store.data_mut().streams.get_mut(&context_id).ok_or(HarnessError::UnknownContext(context_id))
    }

    /// The host's record of an HTTP context.
    #[must_use]
    pub fn stream(&self, context_id: u32) -> Option<&HttpStream> {
        self.store.data().streams.get(&context_id)
    }

    /// Where a request stands.
    #[must_use]
    pub fn outcome(&self, context_id: u32) -> Option<RequestOutcome> {
        self.stream(context_id).map(HttpStream::request_outcome)
    }

    /// Delivers request headers (`proxy_on_request_headers`).
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_request_headers<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        context_id: u32,
        headers: &[(N, V)],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let map = to_map(headers);
        let count = len_i32(map.len());
        let stream = self.stream_mut(context_id)?;
        stream.request_headers = map;
        stream.request.ended = end_of_stream;
        stream.request.paused = true;
        let code: i32 = self
            .call("proxy_on_request_headers", context_id, (context_id as i32, count, i32::from(end_of_stream)))?
            .unwrap_or(0);
        let action = Action::from_code(code);
        let allow_stop = self.store.data().options.allow_on_headers_stop_iteration;
        let stream = self.stream_mut(context_id)?;
        if action == Action::Continue && !stream.is_finished() {
            stream.request.resume();
        } else if action == Action::Pause && !allow_stop && !stream.request.redeliver {
            stream.request.stop_all = true;
        }
        self.run_deferred()?;
        Ok(action)
    }

    /// Delivers a request body chunk (`proxy_on_request_body`). While the filter pauses the body,
    /// chunks accumulate and `body_size` is the whole buffered size, as in Envoy.
    ///
    /// While the headers hold a StopAllIteration (see
    /// [`HostOptions::allow_on_headers_stop_iteration`]) Envoy does not call the filter: the chunk
    /// is buffered and `Pause` returned without a call.
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_request_body(
        &mut self,
        context_id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let stream = self.stream_mut(context_id)?;
        stream.request.buffered.extend_from_slice(chunk);
        stream.request.ended = end_of_stream;
        if stream.request.stop_all {
            return Ok(Action::Pause);
        }
        self.call_request_body(context_id)
    }

    fn call_request_body(&mut self, context_id: u32) -> Result<Action, HarnessError> {
        let stream = self.stream_mut(context_id)?;
        let end_of_stream = stream.request.ended && stream.request.held_trailers.is_none();
        let size = len_i32(stream.request.buffered.len());
        let code: i32 = self
            .call("proxy_on_request_body", context_id, (context_id as i32, size, i32::from(end_of_stream)))?
            .unwrap_or(0);
        self.after_request_callback(context_id, code)
    }

    /// Applies the filter's answer to a request body or trailers callback, as Envoy does:
    /// `Continue` resumes the request (unless it was answered), `Pause` holds it.
    fn after_request_callback(&mut self, context_id: u32, code: i32) -> Result<Action, HarnessError> {
        let action = Action::from_code(code);
        let stream = self.stream_mut(context_id)?;
        if action == Action::Continue && !stream.is_finished() {
            stream.request.resume();
        } else if action == Action::Pause {
            stream.request.paused = true;
        }
        self.run_deferred()?;
        Ok(action)
    }

    /// As [`Vm::after_request_callback`], for the response.
    fn after_response_callback(&mut self, context_id: u32, code: i32) -> Result<Action, HarnessError> {
        let action = Action::from_code(code);
        let stream = self.stream_mut(context_id)?;
        if action == Action::Continue && !stream.is_finished() {
            stream.response.resume();
        } else if action == Action::Pause {
            stream.response.paused = true;
        }
        Ok(action)
    }

    /// Delivers request trailers (`proxy_on_request_trailers`).
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_request_trailers<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        context_id: u32,
        trailers: &[(N, V)],
    ) -> Result<Action, HarnessError> {
        let map = to_map(trailers);
        let stream = self.stream_mut(context_id)?;
        stream.request.ended = true;
        if stream.request.stop_all {
            stream.request.held_trailers = Some(map);
            return Ok(Action::Pause);
        }
        self.call_request_trailers(context_id, map)
    }

    fn call_request_trailers(&mut self, context_id: u32, map: HeaderMap) -> Result<Action, HarnessError> {
        let count = len_i32(map.len());
        let stream = self.stream_mut(context_id)?;
        stream.request_trailers = map;
        let code: i32 = self.call("proxy_on_request_trailers", context_id, (context_id as i32, count))?.unwrap_or(0);
        self.after_request_callback(context_id, code)
    }

    /// Delivers response headers (`proxy_on_response_headers`).
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_response_headers<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        context_id: u32,
        headers: &[(N, V)],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let map = to_map(headers);
        let count = len_i32(map.len());
        let stream = self.stream_mut(context_id)?;
        stream.response_headers = map;
        stream.response.ended = end_of_stream;
        stream.response.paused = true;
        let code: i32 = self
            .call("proxy_on_response_headers", context_id, (context_id as i32, count, i32::from(end_of_stream)))?
            .unwrap_or(0);
        let action = Action::from_code(code);
        let stream = self.stream_mut(context_id)?;
        if action == Action::Continue && !stream.is_finished() {
            stream.response.resume();
        }
        Ok(action)
    }

    /// Delivers a response body chunk (`proxy_on_response_body`).
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_response_body(
        &mut self,
        context_id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let stream = self.stream_mut(context_id)?;
        stream.response.buffered.extend_from_slice(chunk);
        stream.response.ended = end_of_stream;
        let size = len_i32(stream.response.buffered.len());
        let code: i32 = self
            .call("proxy_on_response_body", context_id, (context_id as i32, size, i32::from(end_of_stream)))?
            .unwrap_or(0);
        self.after_response_callback(context_id, code)
    }

    /// Delivers response trailers (`proxy_on_response_trailers`).
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn on_response_trailers<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        context_id: u32,
        trailers: &[(N, V)],
    ) -> Result<Action, HarnessError> {
        let map = to_map(trailers);
        let count = len_i32(map.len());
        let stream = self.stream_mut(context_id)?;
        stream.response_trailers = map;
        stream.response.ended = true;
        let code: i32 = self.call("proxy_on_response_trailers", context_id, (context_id as i32, count))?.unwrap_or(0);
        self.after_response_callback(context_id, code)
    }

    /// Delivers what a `proxy_continue_stream` released from a StopAllIteration: Envoy continues
    /// the headers, then hands the filter the body buffered meanwhile (one callback) and the
    /// trailers.
    fn run_deferred(&mut self) -> Result<(), HarnessError> {
        loop {
            let due = self.store.data().streams.iter().find(|(_, s)| s.request.redeliver).map(|(id, _)| *id);
            let Some(id) = due else {
                return Ok(());
            };
            let stream = self.stream_mut(id)?;
            stream.request.redeliver = false;
            stream.request.headers_forwarded = true;
            let has_body = !stream.request.buffered.is_empty();
            if !has_body && stream.request.held_trailers.is_none() {
                stream.request.resume();
                continue;
            }
            if has_body {
                self.call_request_body(id)?;
            }
            let stream = self.stream_mut(id)?;
            if let Some(trailers) = stream.request.held_trailers.take() {
                if !stream.is_finished() {
                    self.call_request_trailers(id, trailers)?;
                }
            }
        }
    }

    /// Sends a whole request as Envoy delivers it: a new context, headers, body chunks, trailers,
    /// stopping as soon as the filter answers locally or resets. The context stays open (for
    /// callouts and response callbacks); call [`Vm::finish`] to end it.
    ///
    /// # Errors
    /// A trap.
    pub fn send_request(&mut self, request: &Request) -> Result<Exchange, HarnessError> {
        let id = self.create_http_context()?;
        let has_trailers = !request.trailers.is_empty();
        let headers_end = request.body.is_none() && !has_trailers;
        self.on_request_headers(id, &request.headers, headers_end)?;
        if let Some(body) = &request.body {
            let size = request.chunk_size.unwrap_or(body.len()).max(1);
            let mut chunks: Vec<&[u8]> = body.chunks(size).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let last = chunks.len().saturating_sub(1);
            for (n, chunk) in chunks.into_iter().enumerate() {
                if self.is_finished(id) {
                    break;
                }
                self.on_request_body(id, chunk, n == last && !has_trailers)?;
            }
        }
        if has_trailers && !self.is_finished(id) {
            self.on_request_trailers(id, &request.trailers)?;
        }
        let outcome = self.outcome(id).ok_or(HarnessError::UnknownContext(id))?;
        Ok(Exchange { context_id: id, outcome })
    }

    fn is_finished(&self, context_id: u32) -> bool {
        self.stream(context_id).is_none_or(HttpStream::is_finished)
    }

    /// Ends an HTTP context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. Its pending
    /// callouts are cancelled, as Envoy does when a stream goes away.
    ///
    /// # Errors
    /// An unknown context, or a trap.
    pub fn finish(&mut self, context_id: u32) -> Result<(), HarnessError> {
        if !self.store.data().streams.contains_key(&context_id) {
            return Err(HarnessError::UnknownContext(context_id));
        }
        let id = context_id as i32;
        let _done: Option<i32> = self.call("proxy_on_done", context_id, (id,))?;
        self.call::<(i32,), ()>("proxy_on_log", context_id, (id,))?;
        self.call::<(i32,), ()>("proxy_on_delete", context_id, (id,))?;
        let state = self.store.data_mut();
        state.streams.remove(&context_id);
        state.http_calls.retain(|_, call| call.context_id != context_id);
        Ok(())
    }

    /// The callouts waiting for an answer, oldest first.
    #[must_use]
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.store.data().http_calls.values().cloned().collect()
    }

    /// Answers a callout (`proxy_on_http_call_response` on the context that dispatched it).
    ///
    /// # Errors
    /// [`HarnessError::UnknownHttpCall`], or a trap.
    pub fn respond_http_call(&mut self, token: u32, response: HttpCallResponse) -> Result<(), HarnessError> {
        let call = self.take_http_call(token)?;
        let counts = (len_i32(response.headers.len()), len_i32(response.body.len()), len_i32(response.trailers.len()));
        self.store.data_mut().call_response = Some(response);
        let result = self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            call.context_id,
            (call.context_id as i32, token as i32, counts.0, counts.1, counts.2),
        );
        self.store.data_mut().call_response = None;
        result?;
        self.run_deferred()
    }

    /// Fails a callout (timeout or reset): Envoy calls `proxy_on_http_call_response` with no
    /// headers, body or trailers, and the response maps and body are absent.
    ///
    /// # Errors
    /// [`HarnessError::UnknownHttpCall`], or a trap.
    pub fn fail_http_call(&mut self, token: u32) -> Result<(), HarnessError> {
        let call = self.take_http_call(token)?;
        self.store.data_mut().call_response = None;
        self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            call.context_id,
            (call.context_id as i32, token as i32, 0, 0, 0),
        )?;
        self.run_deferred()
    }

    fn take_http_call(&mut self, token: u32) -> Result<HttpCall, HarnessError> {
        self.store.data_mut().http_calls.remove(&token).ok_or(HarnessError::UnknownHttpCall(token))
    }

    /// The tick period the filter asked for, if any.
    #[must_use]
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Fires `proxy_on_tick` on the root context now, whatever the period.
    ///
    /// # Errors
    /// A trap.
    pub fn tick(&mut self) -> Result<(), HarnessError> {
        let root = self.root_context_id();
        self.call::<(i32,), ()>("proxy_on_tick", root, (root as i32,))?;
        self.run_deferred()
    }

    /// Tells the root context Envoy is done with it (`proxy_on_done`), as Envoy does before it
    /// drops a plugin; returns whether the filter says it is done too (a filter without the
    /// export is).
    ///
    /// # Errors
    /// A trap.
    pub fn root_done(&mut self) -> Result<bool, HarnessError> {
        let root = self.root_context_id();
        let done: Option<i32> = self.call("proxy_on_done", root, (root as i32,))?;
        self.run_deferred()?;
        Ok(done.is_none_or(|d| d != 0))
    }

    /// Fires every tick that is due by the virtual clock (after [`VirtualClock::advance`]);
    /// returns how many fired.
    ///
    /// [`VirtualClock::advance`]: crate::VirtualClock::advance
    ///
    /// # Errors
    /// A trap.
    pub fn run_due_ticks(&mut self) -> Result<u32, HarnessError> {
        let mut fired = 0;
        loop {
            let state = self.store.data();
            let period = u64::from(state.tick_period_ms).saturating_mul(1_000_000);
            let now = state.shared.clock.now_nanos();
            match state.next_tick_nanos {
                Some(due) if period > 0 && due <= now => {
                    self.store.data_mut().next_tick_nanos = Some(due.saturating_add(period));
                    self.tick()?;
                    fired += 1;
                }
                _ => return Ok(fired),
            }
        }
    }

    /// Delivers this VM's pending `proxy_on_queue_ready` notifications; returns how many.
    ///
    /// # Errors
    /// A trap, or [`HarnessError::Host`] on a poisoned lock.
    pub fn deliver_queue_ready(&mut self) -> Result<usize, HarnessError> {
        let ready = lock(&self.store.data().shared.queues)
            .map_err(|_| HarnessError::Host("shared queue lock poisoned".into()))?
            .take_ready_for(self.index());
        for item in &ready {
            let ctx = item.owner.context_id;
            self.call::<(i32, i32), ()>("proxy_on_queue_ready", ctx, (ctx as i32, item.queue_id as i32))?;
            self.run_deferred()?;
        }
        Ok(ready.len())
    }

    /// Everything the filter logged, in order.
    #[must_use]
    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().captured.lines
    }

    /// Takes the captured log lines (so the next assertion sees only new ones).
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().captured.lines)
    }

    /// Whether some captured line at `level` or above contains `needle`.
    #[must_use]
    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.logs().iter().any(|line| line.level >= level && line.message.contains(needle))
    }

    /// What the filter wrote to WASI stdout.
    #[must_use]
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.store.data().captured.stdout).into_owned()
    }

    /// What the filter wrote to WASI stderr.
    #[must_use]
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.store.data().captured.stderr).into_owned()
    }

    /// Sets a property for `proxy_get_property` on this VM.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.store.data_mut().properties.insert(path.iter().map(|p| (*p).to_owned()).collect(), value.to_vec());
    }

    /// Fuel (≈ wasm instructions) every call into this VM has used so far.
    #[must_use]
    pub fn fuel_consumed(&self) -> u64 {
        self.fuel_total
    }

    /// Fuel the last call into the filter used.
    #[must_use]
    pub fn last_call_fuel(&self) -> u64 {
        self.last_call_fuel
    }

    /// Runs `f` and returns its result with the fuel the filter used meanwhile: the
    /// "instructions per request" of whatever `f` drives.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn fuel_used<T>(
        &mut self,
        f: impl FnOnce(&mut Vm) -> Result<T, HarnessError>,
    ) -> Result<(T, u64), HarnessError> {
        let before = self.fuel_total;
        let value = f(self)?;
        Ok((value, self.fuel_total.saturating_sub(before)))
    }

    /// Calls and fuel by export so far (`proxy_on_request_headers`, `proxy_on_log`, ...): where a
    /// request's cost goes, callback by callback.
    #[must_use]
    pub fn fuel_by_export(&self) -> &BTreeMap<String, ExportFuel> {
        &self.fuel_by_export
    }

    /// As [`Vm::fuel_used`], split by export: the calls and fuel of each export `f` made the VM
    /// run. Exports `f` did not call are absent.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn fuel_by_export_used<T>(
        &mut self,
        f: impl FnOnce(&mut Vm) -> Result<T, HarnessError>,
    ) -> Result<(T, BTreeMap<String, ExportFuel>), HarnessError> {
        let before = self.fuel_by_export.clone();
        let value = f(self)?;
        let used = self
            .fuel_by_export
            .iter()
            .filter_map(|(name, now)| {
                let earlier = before.get(name).copied().unwrap_or_default();
                (now.calls > earlier.calls).then(|| {
                    let delta = ExportFuel {
                        calls: now.calls.saturating_sub(earlier.calls),
                        fuel: now.fuel.saturating_sub(earlier.fuel),
                    };
                    (name.clone(), delta)
                })
            })
            .collect();
        Ok((value, used))
    }

    /// Whether the VM trapped (and so refuses further calls).
    #[must_use]
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }
}

fn to_map<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> HeaderMap {
    let mut map = HeaderMap::default();
    for (name, value) in pairs {
        map.add(name.as_ref(), value.as_ref().as_bytes());
    }
    map
}

/// A host-side size as the ABI's wasm32 `usize` (carried in i32).
fn len_i32(len: usize) -> i32 {
    u32::try_from(len).unwrap_or(u32::MAX) as i32
}
