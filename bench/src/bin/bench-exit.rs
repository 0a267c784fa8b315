//! `bench-exit STAMPS SLOT`: the container process whose exit is timed. It
//! maps slot SLOT of the stamp file, waits for one byte on stdin (the
//! benchmark's `go` FIFO, written once the supervisor has reported the
//! start and gone idle), stores CLOCK_MONOTONIC in its slot and calls
//! `_exit(0)`. Everything costly — the open, the mmap — happens before the
//! wait; after the stamp there is only a store to a shared page.

use std::ffi::CString;

fn fail(what: &str) -> ! {
    eprintln!("bench-exit: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench-exit STAMPS SLOT");
        std::process::exit(2);
    }
    let path = CString::new(args[1].as_str()).unwrap_or_else(|_| fail("stamp path"));
    let slot: usize = args[2].parse().unwrap_or_else(|_| fail("slot"));
    let page = 4096usize;
    let offset = slot * 8 / page * page;
    // SAFETY: plain system calls on a path and an fd we own; the mapping
    // covers the page holding the slot, which the benchmark sized the file
    // to contain.
    let slot_ptr = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            fail("open stamps");
        }
        let map = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        );
        if map == libc::MAP_FAILED {
            fail("mmap stamps");
        }
        map.cast::<u8>().add(slot * 8 - offset).cast::<u64>()
    };
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        fail("read go byte from stdin");
    }
    // SAFETY: clock_gettime fills a local timespec; the slot pointer is in
    // the mapping made above (8-aligned: slots are u64s from offset 0);
    // _exit ends the process without running anything else.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        slot_ptr.write_volatile(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
        libc::_exit(0)
    }
}
