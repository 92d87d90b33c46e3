//! The proxy-wasm 0.2.1 host calls (`env::proxy_*`) the harness implements.
//!
//! Each behaves as Envoy documents it (and proxy-wasm-cpp-host implements it): the statuses
//! returned are the ones the SDK's `hostcalls.rs` expects, so a filter that would panic on a
//! status in Envoy panics here too. gRPC calls are not hosted.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::abi::{self, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use crate::host::lock;
use crate::http_call::HttpCall;
use crate::logs::LogLine;
use crate::memory::{offset, read, read_string, return_bytes, status_code, write_u32, write_u64, Fault};
use crate::stream::{HeaderMap, HttpStream, LocalResponse};
use crate::vm::VmState;

type Ctx<'a> = Caller<'a, VmState>;

/// Registers every `env::proxy_*` function on `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| {
        status_code(log(&mut c, level, ptr, len))
    })?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: Ctx<'_>, out: i32| {
        let level = c.data().options.log_level as u32;
        status_code(write_u32(&mut c, out, level).map_err(Fault::from))
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Ctx<'_>, out: i32| {
        let now = c.data().shared.clock.now_nanos();
        status_code(write_u64(&mut c, out, now).map_err(Fault::from))
    })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Ctx<'_>, period: i32| {
        let state = c.data_mut();
        state.tick_period_ms = period as u32;
        state.next_tick_nanos = (period != 0)
            .then(|| state.shared.clock.now_nanos().saturating_add(u64::from(period as u32).saturating_mul(1_000_000)));
        status_code(Ok(()))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| {
            status_code(get_buffer(&mut c, kind, start, max, ptr_out, size_out))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            status_code(set_buffer(&mut c, kind, start, size, ptr, len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, kind: i32, ptr_out: i32, size_out: i32| {
            status_code(get_map_pairs(&mut c, kind, ptr_out, size_out))
        },
    )?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Ctx<'_>, kind: i32, ptr: i32, len: i32| {
        status_code(set_map_pairs(&mut c, kind, ptr, len))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, kind: i32, kp: i32, ks: i32, ptr_out: i32, size_out: i32| {
            status_code(get_map_value(&mut c, kind, kp, ks, ptr_out, size_out))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>, kind: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            status_code(edit_map(&mut c, kind, kp, ks, Some((vp, vs)), Edit::Replace))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>, kind: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            status_code(edit_map(&mut c, kind, kp, ks, Some((vp, vs)), Edit::Add))
        },
    )?;
    linker.func_wrap("env", "proxy_remove_header_map_value", |mut c: Ctx<'_>, kind: i32, kp: i32, ks: i32| {
        status_code(edit_map(&mut c, kind, kp, ks, None, Edit::Remove))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, pp: i32, ps: i32, ptr_out: i32, size_out: i32| {
            status_code(get_property(&mut c, pp, ps, ptr_out, size_out))
        },
    )?;
    linker.func_wrap("env", "proxy_set_property", |mut c: Ctx<'_>, pp: i32, ps: i32, vp: i32, vs: i32| {
        status_code(set_property(&mut c, pp, ps, vp, vs))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, kp: i32, ks: i32, ptr_out: i32, size_out: i32, cas_out: i32| {
            status_code(get_shared_data(&mut c, kp, ks, ptr_out, size_out, cas_out))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32| {
            status_code(set_shared_data(&mut c, kp, ks, vp, vs, cas))
        },
    )?;
    linker.func_wrap("env", "proxy_register_shared_queue", |mut c: Ctx<'_>, np: i32, ns: i32, id_out: i32| {
        status_code(register_queue(&mut c, np, ns, id_out))
    })?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, vp: i32, vs: i32, np: i32, ns: i32, id_out: i32| {
            status_code(resolve_queue(&mut c, vp, vs, np, ns, id_out))
        },
    )?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", |mut c: Ctx<'_>, id: i32, ptr_out: i32, size_out: i32| {
        status_code(dequeue(&mut c, id, ptr_out, size_out))
    })?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", |mut c: Ctx<'_>, id: i32, vp: i32, vs: i32| {
        status_code(enqueue(&mut c, id, vp, vs))
    })?;
    linker.func_wrap("env", "proxy_continue_stream", |mut c: Ctx<'_>, kind: i32| {
        status_code(continue_stream(&mut c, kind))
    })?;
    linker
        .func_wrap("env", "proxy_close_stream", |mut c: Ctx<'_>, kind: i32| status_code(close_stream(&mut c, kind)))?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>, status: i32, dp: i32, ds: i32, bp: i32, bs: i32, hp: i32, hs: i32, grpc: i32| {
            status_code(send_local_response(&mut c, status, (dp, ds), (bp, bs), (hp, hs), grpc))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         up: i32,
         us: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         tp: i32,
         ts: i32,
         timeout: i32,
         token_out: i32| {
            status_code(http_call(&mut c, (up, us), (hp, hs), (bp, bs), (tp, ts), timeout, token_out))
        },
    )?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut c: Ctx<'_>, context_id: i32| {
        let id = context_id as u32;
        let state = c.data_mut();
        let known = id == state.root_context_id || state.streams.contains_key(&id);
        if known {
            state.effective_context = id;
        }
        status_code(if known { Ok(()) } else { Err(Status::BadArgument.into()) })
    })?;
    linker.func_wrap("env", "proxy_done", |_c: Ctx<'_>| status_code(Ok(())))?;
    linker.func_wrap("env", "proxy_define_metric", |mut c: Ctx<'_>, kind: i32, np: i32, ns: i32, id_out: i32| {
        status_code(define_metric(&mut c, kind, np, ns, id_out))
    })?;
    linker.func_wrap("env", "proxy_increment_metric", |c: Ctx<'_>, id: i32, offset: i64| {
        let result = lock(&c.data().shared.metrics).and_then(|mut m| m.increment(id as u32, offset));
        status_code(result.map_err(Fault::from))
    })?;
    linker.func_wrap("env", "proxy_record_metric", |c: Ctx<'_>, id: i32, value: i64| {
        let result = lock(&c.data().shared.metrics).and_then(|mut m| m.record(id as u32, value as u64));
        status_code(result.map_err(Fault::from))
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut c: Ctx<'_>, id: i32, out: i32| {
        let value = lock(&c.data().shared.metrics).and_then(|m| m.get(id as u32));
        status_code(value.and_then(|v| write_u64(&mut c, out, v)).map_err(Fault::from))
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Ctx<'_>, _np: i32, _ns: i32, _ap: i32, _as: i32, _rp: i32, _rs: i32| {
            // No foreign functions are registered, as in an Envoy without extensions.
            status_code(Err(Status::NotFound.into()))
        },
    )?;
    Ok(())
}

fn log(c: &mut Ctx<'_>, level: i32, ptr: i32, len: i32) -> Result<(), Fault> {
    let level = LogLevel::from_code(level).ok_or(Status::BadArgument)?;
    let message = read_string(c, ptr, len)?;
    let state = c.data_mut();
    if level >= state.options.log_level {
        if state.options.echo_logs {
            eprintln!("[vm {}] {}", state.index, LogLine { level, message: message.clone() });
        }
        state.captured.lines.push(LogLine { level, message });
    }
    Ok(())
}

/// The HTTP stream of the effective context.
fn current_stream(state: &mut VmState) -> Result<&mut HttpStream, Status> {
    let id = state.effective_context;
    state.streams.get_mut(&id).ok_or(Status::BadArgument)
}

fn get_buffer(c: &mut Ctx<'_>, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32) -> Result<(), Fault> {
    let kind = BufferType::from_code(kind).ok_or(Status::BadArgument)?;
    let state = c.data_mut();
    let id = state.effective_context;
    let buffer: Vec<u8> = match kind {
        BufferType::PluginConfiguration => state.plugin_configuration.clone(),
        BufferType::VmConfiguration => state.options.vm_configuration.clone(),
        BufferType::HttpRequestBody => {
            state.streams.get(&id).map(|s| s.request.buffered.clone()).ok_or(Status::NotFound)?
        }
        BufferType::HttpResponseBody => {
            state.streams.get(&id).map(|s| s.response.buffered.clone()).ok_or(Status::NotFound)?
        }
        BufferType::HttpCallResponseBody => {
            state.call_response.as_ref().map(|r| r.body.clone()).ok_or(Status::NotFound)?
        }
    };
    // Envoy computes in 64 bits (start + usize::MAX from a wasm32 SDK does not overflow) and
    // clamps to what the buffer holds; nothing to copy leaves the return slots untouched.
    let start = offset(start);
    let end = start.saturating_add(offset(max)).min(buffer.len());
    match buffer.get(start..end) {
        Some(slice) if !slice.is_empty() => return_bytes(c, slice, ptr_out, size_out),
        _ => Ok(()),
    }
}

fn set_buffer(c: &mut Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32) -> Result<(), Fault> {
    let kind = BufferType::from_code(kind).ok_or(Status::BadArgument)?;
    let data = read(c, ptr, len)?;
    let state = c.data_mut();
    let stream = current_stream(state)?;
    let buffer = match kind {
        BufferType::HttpRequestBody => &mut stream.request.buffered,
        BufferType::HttpResponseBody => &mut stream.response.buffered,
        _ => return Err(Status::BadArgument.into()),
    };
    // Envoy's rules: start 0 replaces the first `size` bytes (prepends when 0), start at or past
    // the end appends, anything else is refused.
    let (start, size) = (offset(start), offset(size));
    if start == 0 {
        let drained = size.min(buffer.len());
        buffer.splice(..drained, data);
    } else if start >= buffer.len() {
        buffer.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

fn map_of(state: &mut VmState, kind: MapType) -> Result<&mut HeaderMap, Status> {
    match kind {
        // Outside a callout's answer (or on a failed callout) Envoy has no such map.
        MapType::HttpCallResponseHeaders => {
            state.call_response.as_mut().map(|r| &mut r.headers).ok_or(Status::BadArgument)
        }
        MapType::HttpCallResponseTrailers => {
            state.call_response.as_mut().map(|r| &mut r.trailers).ok_or(Status::BadArgument)
        }
        MapType::HttpRequestHeaders => Ok(&mut current_stream(state)?.request_headers),
        MapType::HttpRequestTrailers => Ok(&mut current_stream(state)?.request_trailers),
        MapType::HttpResponseHeaders => Ok(&mut current_stream(state)?.response_headers),
        MapType::HttpResponseTrailers => Ok(&mut current_stream(state)?.response_trailers),
    }
}

fn get_map_pairs(c: &mut Ctx<'_>, kind: i32, ptr_out: i32, size_out: i32) -> Result<(), Fault> {
    let kind = MapType::from_code(kind).ok_or(Status::BadArgument)?;
    let bytes = abi::serialize_map(map_of(c.data_mut(), kind)?.pairs());
    return_bytes(c, &bytes, ptr_out, size_out)
}

fn set_map_pairs(c: &mut Ctx<'_>, kind: i32, ptr: i32, len: i32) -> Result<(), Fault> {
    let kind = MapType::from_code(kind).ok_or(Status::BadArgument)?;
    let bytes = read(c, ptr, len)?;
    let pairs = abi::deserialize_map(&bytes).ok_or(Status::SerializationFailure)?;
    map_of(c.data_mut(), kind)?.set_pairs(pairs);
    Ok(())
}

fn get_map_value(c: &mut Ctx<'_>, kind: i32, kp: i32, ks: i32, ptr_out: i32, size_out: i32) -> Result<(), Fault> {
    let kind = MapType::from_code(kind).ok_or(Status::BadArgument)?;
    let key = read_string(c, kp, ks)?;
    // Envoy answers the first value of a repeated header.
    let value = map_of(c.data_mut(), kind)?.get_bytes(&key).map(<[u8]>::to_vec).ok_or(Status::NotFound)?;
    return_bytes(c, &value, ptr_out, size_out)
}

#[derive(Debug, Clone, Copy)]
enum Edit {
    Add,
    Replace,
    Remove,
}

fn edit_map(c: &mut Ctx<'_>, kind: i32, kp: i32, ks: i32, value: Option<(i32, i32)>, edit: Edit) -> Result<(), Fault> {
    let kind = MapType::from_code(kind).ok_or(Status::BadArgument)?;
    let key = read_string(c, kp, ks)?;
    let value = match value {
        Some((vp, vs)) => read(c, vp, vs)?,
        None => Vec::new(),
    };
    let map = map_of(c.data_mut(), kind)?;
    match edit {
        Edit::Add => map.add(&key, &value),
        Edit::Replace => map.replace(&key, &value),
        Edit::Remove => map.remove(&key),
    }
    Ok(())
}

fn get_property(c: &mut Ctx<'_>, pp: i32, ps: i32, ptr_out: i32, size_out: i32) -> Result<(), Fault> {
    let path = abi::split_property_path(&read(c, pp, ps)?);
    let value = c.data().properties.get(&path).cloned().ok_or(Status::NotFound)?;
    return_bytes(c, &value, ptr_out, size_out)
}

fn set_property(c: &mut Ctx<'_>, pp: i32, ps: i32, vp: i32, vs: i32) -> Result<(), Fault> {
    let path = abi::split_property_path(&read(c, pp, ps)?);
    let value = read(c, vp, vs)?;
    c.data_mut().properties.insert(path, value);
    Ok(())
}

fn get_shared_data(c: &mut Ctx<'_>, kp: i32, ks: i32, ptr_out: i32, size_out: i32, cas_out: i32) -> Result<(), Fault> {
    let key = read_string(c, kp, ks)?;
    let (value, cas) = lock(&c.data().shared.data)?.get(&key).ok_or(Status::NotFound)?;
    return_bytes(c, &value, ptr_out, size_out)?;
    write_u32(c, cas_out, cas)?;
    Ok(())
}

fn set_shared_data(c: &mut Ctx<'_>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32) -> Result<(), Fault> {
    let key = read_string(c, kp, ks)?;
    let cas = cas as u32;
    // The SDK's `remove_shared_data` passes a null value. Envoy (proxy-wasm-cpp-host) has no
    // removal: it stores the empty value and keeps the key, which is what host memory grows
    // with, so the harness does the same.
    let value = if vp == 0 && vs == 0 { Vec::new() } else { read(c, vp, vs)? };
    let mut data = lock(&c.data().shared.data)?;
    data.before_filter_write(&key);
    data.set(&key, value, cas).map_err(Fault::from)
}

fn register_queue(c: &mut Ctx<'_>, np: i32, ns: i32, id_out: i32) -> Result<(), Fault> {
    let name = read_string(c, np, ns)?;
    let state = c.data();
    let owner = crate::shared::QueueOwner { vm: state.index, context_id: state.effective_context };
    let id = lock(&state.shared.queues)?.register(&state.options.vm_id, &name, owner);
    write_u32(c, id_out, id)?;
    Ok(())
}

fn resolve_queue(c: &mut Ctx<'_>, vp: i32, vs: i32, np: i32, ns: i32, id_out: i32) -> Result<(), Fault> {
    let vm_id = read_string(c, vp, vs)?;
    let name = read_string(c, np, ns)?;
    let id = lock(&c.data().shared.queues)?.resolve(&vm_id, &name).ok_or(Status::NotFound)?;
    write_u32(c, id_out, id)?;
    Ok(())
}

fn dequeue(c: &mut Ctx<'_>, id: i32, ptr_out: i32, size_out: i32) -> Result<(), Fault> {
    let value = lock(&c.data().shared.queues)?.dequeue(id as u32)?;
    return_bytes(c, &value, ptr_out, size_out)
}

fn enqueue(c: &mut Ctx<'_>, id: i32, vp: i32, vs: i32) -> Result<(), Fault> {
    let value = if vp == 0 { Vec::new() } else { read(c, vp, vs)? };
    lock(&c.data().shared.queues)?.enqueue(id as u32, value).map_err(Fault::from)
}

fn continue_stream(c: &mut Ctx<'_>, kind: i32) -> Result<(), Fault> {
    let kind = StreamType::from_code(kind).ok_or(Status::BadArgument)?;
    let stream = current_stream(c.data_mut())?;
    if stream.is_finished() {
        return Ok(());
    }
    match kind {
        // Envoy resumes after the VM call returns; a StopAllIteration stream then delivers its
        // held body and trailers to the filter (the VM does that once this call is over).
        StreamType::HttpRequest if stream.request.stop_all => {
            stream.request.stop_all = false;
            stream.request.redeliver = true;
        }
        StreamType::HttpRequest => stream.request.resume(),
        StreamType::HttpResponse => stream.response.resume(),
        StreamType::Downstream | StreamType::Upstream => return Err(Status::Unimplemented.into()),
    }
    Ok(())
}

fn close_stream(c: &mut Ctx<'_>, kind: i32) -> Result<(), Fault> {
    let kind = StreamType::from_code(kind).ok_or(Status::BadArgument)?;
    let stream = current_stream(c.data_mut())?;
    match kind {
        StreamType::HttpRequest | StreamType::HttpResponse => stream.reset = true,
        StreamType::Downstream | StreamType::Upstream => return Err(Status::Unimplemented.into()),
    }
    Ok(())
}

fn send_local_response(
    c: &mut Ctx<'_>,
    status: i32,
    details: (i32, i32),
    body: (i32, i32),
    headers: (i32, i32),
    grpc_status: i32,
) -> Result<(), Fault> {
    let details = read_string(c, details.0, details.1)?;
    let body = read(c, body.0, body.1)?;
    let header_bytes = read(c, headers.0, headers.1)?;
    let pairs = abi::deserialize_map(&header_bytes).ok_or(Status::SerializationFailure)?;
    let mut map = HeaderMap::default();
    map.set_pairs(pairs);
    let stream = current_stream(c.data_mut())?;
    stream.local_response = Some(LocalResponse { status: status as u32, details, headers: map, body, grpc_status });
    Ok(())
}

fn http_call(
    c: &mut Ctx<'_>,
    upstream: (i32, i32),
    headers: (i32, i32),
    body: (i32, i32),
    trailers: (i32, i32),
    timeout_ms: i32,
    token_out: i32,
) -> Result<(), Fault> {
    let upstream = read_string(c, upstream.0, upstream.1)?;
    let header_bytes = read(c, headers.0, headers.1)?;
    let body = read(c, body.0, body.1)?;
    let trailer_bytes = read(c, trailers.0, trailers.1)?;
    let mut header_map = HeaderMap::default();
    header_map.set_pairs(abi::deserialize_map(&header_bytes).ok_or(Status::BadArgument)?);
    let mut trailer_map = HeaderMap::default();
    trailer_map.set_pairs(abi::deserialize_map(&trailer_bytes).ok_or(Status::BadArgument)?);

    let state = c.data_mut();
    // Envoy refuses an unknown cluster and a request without :method, :path or :authority.
    if let Some(clusters) = &state.options.clusters {
        if !clusters.contains(&upstream) {
            return Err(Status::BadArgument.into());
        }
    }
    for required in [":method", ":path", ":authority"] {
        if header_map.get_bytes(required).is_none() {
            return Err(Status::BadArgument.into());
        }
    }
    state.last_http_token = state.last_http_token.wrapping_add(1).max(1);
    let token = state.last_http_token;
    state.http_calls.insert(
        token,
        HttpCall {
            token,
            context_id: state.effective_context,
            upstream,
            headers: header_map,
            body,
            trailers: trailer_map,
            timeout: Duration::from_millis(u64::from(timeout_ms as u32)),
        },
    );
    write_u32(c, token_out, token)?;
    Ok(())
}

fn define_metric(c: &mut Ctx<'_>, kind: i32, np: i32, ns: i32, id_out: i32) -> Result<(), Fault> {
    let kind = MetricType::from_code(kind).ok_or(Status::BadArgument)?;
    let name = read_string(c, np, ns)?;
    let id = lock(&c.data().shared.metrics)?.define(kind, &name);
    write_u32(c, id_out, id)?;
    Ok(())
}
