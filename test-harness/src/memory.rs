//! Reading and writing the VM's linear memory from host calls, and allocating in it.
//!
//! Host calls get wasm32 pointers and lengths as `i32`; anything out of bounds is the ABI's
//! `InvalidMemoryAccess`, never a host panic. Data the host returns is copied into memory the
//! filter's own allocator (`proxy_on_memory_allocate`, or `malloc`) handed out, because the SDK
//! takes ownership of it (`Vec::from_raw_parts`).

use wasmtime::Caller;

use crate::abi::Status;
use crate::vm::VmState;

/// Why a host call did not return `Ok`: an ABI status for the filter, or a trap that ends the call.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Returned to the filter as the call's status.
    Status(Status),
    /// Unwinds the VM (a trap inside the filter's allocator, or `proc_exit`).
    Trap(wasmtime::Error),
}

impl From<Status> for Fault {
    fn from(status: Status) -> Self {
        Fault::Status(status)
    }
}

/// A host call's outcome, ready for the ABI: a status code, or a trap.
pub(crate) fn status_code(result: Result<(), Fault>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(Fault::Status(status)) => Ok(status.code()),
        Err(Fault::Trap(trap)) => Err(trap),
    }
}

/// A wasm32 pointer or length as a host index.
pub(crate) fn offset(value: i32) -> usize {
    // wasm32 addresses are unsigned 32-bit numbers carried in i32.
    value as u32 as usize
}

fn memory(caller: &mut Caller<'_, VmState>) -> Result<wasmtime::Memory, Status> {
    caller.data().memory.ok_or(Status::InvalidMemoryAccess)
}

/// Copies `len` bytes at `ptr` out of the VM.
pub(crate) fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller)?;
    let start = offset(ptr);
    let end = start.checked_add(offset(len)).ok_or(Status::InvalidMemoryAccess)?;
    memory.data(&*caller).get(start..end).map(<[u8]>::to_vec).ok_or(Status::InvalidMemoryAccess)
}

/// Copies `len` bytes at `ptr` out of the VM as (lossy) UTF-8.
pub(crate) fn read_string(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<String, Status> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller)?;
    memory.write(&mut *caller, offset(ptr), bytes).map_err(|_| Status::InvalidMemoryAccess)
}

/// Writes a little-endian `u32` at `ptr` (the ABI's return slots for ids, sizes and pointers).
pub(crate) fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64` at `ptr`.
pub(crate) fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the filter: allocates in the VM, copies, and stores the pointer and size in
/// the two return slots. Empty data returns a null pointer and size 0, which the SDK reads as
/// "no data" (`None`, or an empty header value).
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_slot: i32,
    size_slot: i32,
) -> Result<(), Fault> {
    let size = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = caller.data().alloc.clone().ok_or(Status::InvalidMemoryAccess)?;
        let ptr = alloc.call(&mut *caller, size as i32).map_err(Fault::Trap)?;
        if ptr == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        write(caller, ptr, bytes)?;
        ptr
    };
    write_u32(caller, ptr_slot, ptr as u32)?;
    write_u32(caller, size_slot, size)?;
    Ok(())
}
