//! The handful of WASI preview1 functions a Rust `wasm32-wasip1` filter imports.
//!
//! Hand-written rather than wasmtime-wasi so that time is the virtual clock, randomness is
//! seeded (runs repeat exactly), the environment is what the test set (Envoy's
//! `vm_config.environment_variables`), and output is captured per VM. There is no filesystem:
//! no preopened directories, as in Envoy.

use wasmtime::{Caller, Linker};

use crate::memory::{offset, read, write, write_u32, write_u64};
use crate::vm::VmState;

type Ctx<'a> = Caller<'a, VmState>;

/// `proc_exit` unwinds the VM with this error; the trap report carries the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the filter called proc_exit({0})")]
pub struct ProcExit(pub i32);

/// WASI errno values used here.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSUP: i32 = 58;
    pub const SPIPE: i32 = 70;
}

const WASI: &str = "wasi_snapshot_preview1";

fn ok_or_fault(result: Result<(), crate::abi::Status>) -> i32 {
    match result {
        Ok(()) => errno::SUCCESS,
        Err(_) => errno::FAULT,
    }
}

/// Registers the WASI functions on `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "clock_time_get", |mut c: Ctx<'_>, _id: i32, _precision: i64, out: i32| {
        // Every clock (realtime, monotonic, cputime) reads the virtual clock: monotonic
        // as long as the test only moves it forward.
        let now = c.data().shared.clock.now_nanos();
        ok_or_fault(write_u64(&mut c, out, now))
    })?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: Ctx<'_>, _id: i32, out: i32| {
        ok_or_fault(write_u64(&mut c, out, 1))
    })?;
    linker.func_wrap(WASI, "random_get", |mut c: Ctx<'_>, ptr: i32, len: i32| {
        let mut bytes = vec![0u8; offset(len)];
        for chunk in bytes.chunks_mut(8) {
            let next = splitmix64(&mut c.data_mut().rng).to_le_bytes();
            for (dst, src) in chunk.iter_mut().zip(next) {
                *dst = src;
            }
        }
        ok_or_fault(write(&mut c, ptr, &bytes))
    })?;
    linker.func_wrap(WASI, "environ_sizes_get", |mut c: Ctx<'_>, count_out: i32, size_out: i32| {
        let env = environ(c.data());
        let size: usize = env.iter().map(Vec::len).sum();
        let count = u32::try_from(env.len()).unwrap_or(u32::MAX);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        ok_or_fault(write_u32(&mut c, count_out, count).and_then(|()| write_u32(&mut c, size_out, size)))
    })?;
    linker.func_wrap(WASI, "environ_get", |mut c: Ctx<'_>, pointers: i32, buffer: i32| {
        let env = environ(c.data());
        ok_or_fault(write_strings(&mut c, &env, pointers, buffer))
    })?;
    linker.func_wrap(WASI, "args_sizes_get", |mut c: Ctx<'_>, count_out: i32, size_out: i32| {
        ok_or_fault(write_u32(&mut c, count_out, 0).and_then(|()| write_u32(&mut c, size_out, 0)))
    })?;
    linker.func_wrap(WASI, "args_get", |_c: Ctx<'_>, _p: i32, _b: i32| errno::SUCCESS)?;
    linker.func_wrap(WASI, "fd_write", |mut c: Ctx<'_>, fd: i32, iovs: i32, iovs_len: i32, written_out: i32| {
        fd_write(&mut c, fd, iovs, iovs_len, written_out)
    })?;
    linker.func_wrap(WASI, "fd_read", |_c: Ctx<'_>, _fd: i32, _iovs: i32, _len: i32, _out: i32| errno::BADF)?;
    linker.func_wrap(
        WASI,
        "fd_close",
        |_c: Ctx<'_>, fd: i32| {
            if (0..=2).contains(&fd) {
                errno::SUCCESS
            } else {
                errno::BADF
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |_c: Ctx<'_>, fd: i32, _offset: i64, _whence: i32, _out: i32| {
            if (0..=2).contains(&fd) {
                errno::SPIPE
            } else {
                errno::BADF
            }
        },
    )?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: Ctx<'_>, fd: i32, out: i32| {
        if !(0..=2).contains(&fd) {
            return errno::BADF;
        }
        // filetype character_device (2), no flags, no rights: enough for std's stdio.
        let mut stat = [0u8; 24];
        if let Some(kind) = stat.first_mut() {
            *kind = 2;
        }
        ok_or_fault(write(&mut c, out, &stat))
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_c: Ctx<'_>, _fd: i32, _out: i32| errno::BADF)?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_c: Ctx<'_>, _fd: i32, _path: i32, _len: i32| errno::BADF)?;
    linker.func_wrap(WASI, "poll_oneoff", |_c: Ctx<'_>, _in: i32, _out: i32, _n: i32, _events: i32| errno::NOTSUP)?;
    linker.func_wrap(WASI, "sched_yield", |_c: Ctx<'_>| errno::SUCCESS)?;
    linker.func_wrap(WASI, "proc_exit", |_c: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcExit(code)))
    })?;
    Ok(())
}

/// `NAME=value\0` for each variable.
fn environ(state: &VmState) -> Vec<Vec<u8>> {
    state.options.env.iter().map(|(name, value)| format!("{name}={value}\0").into_bytes()).collect()
}

/// Writes C strings into `buffer` and their addresses into the pointer array.
fn write_strings(c: &mut Ctx<'_>, strings: &[Vec<u8>], pointers: i32, buffer: i32) -> Result<(), crate::abi::Status> {
    let mut at = offset(buffer);
    for (n, bytes) in strings.iter().enumerate() {
        let address = u32::try_from(at).map_err(|_| crate::abi::Status::InvalidMemoryAccess)?;
        let slot = offset(pointers).saturating_add(n.saturating_mul(4));
        write_u32(c, slot as u32 as i32, address)?;
        write(c, address as i32, bytes)?;
        at = at.saturating_add(bytes.len());
    }
    Ok(())
}

fn fd_write(c: &mut Ctx<'_>, fd: i32, iovs: i32, iovs_len: i32, written_out: i32) -> i32 {
    if !(1..=2).contains(&fd) {
        return errno::BADF;
    }
    let Ok(table) = read(c, iovs, iovs_len.saturating_mul(8)) else {
        return errno::FAULT;
    };
    let mut data = Vec::new();
    for iov in table.chunks_exact(8) {
        let field = |range: std::ops::Range<usize>| {
            iov.get(range).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(i32::from_le_bytes)
        };
        let (Some(ptr), Some(len)) = (field(0..4), field(4..8)) else {
            return errno::INVAL;
        };
        match read(c, ptr, len) {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(_) => return errno::FAULT,
        }
    }
    let state = c.data_mut();
    if state.options.echo_logs {
        eprint!("{}", String::from_utf8_lossy(&data));
    }
    let written = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if fd == 1 {
        state.captured.stdout.extend_from_slice(&data);
    } else {
        state.captured.stderr.extend_from_slice(&data);
    }
    ok_or_fault(write_u32(c, written_out, written))
}

/// SplitMix64: tiny, seeded, good enough for a filter's random ids and hash seeds in tests.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
