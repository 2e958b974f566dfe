//! Make a *running* process execute one system call of our choosing.
//!
//! Tests use this to prove that a daemon's seccomp filter kills it for a
//! system call outside its allowlist: the daemon sits blocked in `poll(2)`,
//! we attach with ptrace, point it at a `syscall` instruction with the
//! registers set up for the call we want, single-step over it, and look at
//! what happened. If the process survived, its registers are put back
//! exactly as we found them and we detach, so it carries on (and restarts the
//! system call it was blocked in) as if nothing had happened.
//!
//! Only x86_64 is implemented; elsewhere [`inject_syscall`] returns
//! [`InjectError::Unsupported`].

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::Signal;

/// What became of the process after it executed the injected system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned this value (`-errno` on failure, as the kernel
    /// returns it in `rax`); the process was restored and released.
    Returned(i64),
    /// The process was killed by this signal (seccomp's
    /// `SECCOMP_RET_KILL_PROCESS` kills with `SIGSYS`).
    Killed(Signal),
    /// The process exited with this status (e.g. an injected `exit_group`).
    Exited(i32),
}

/// Why the injection could not be carried out.
#[derive(Debug)]
pub enum InjectError {
    /// A ptrace request failed.
    Ptrace {
        /// Which request.
        op: &'static str,
        /// The error it returned.
        errno: Errno,
    },
    /// `waitpid` on the tracee failed.
    Wait(Errno),
    /// The process went away before we got to inject anything.
    Vanished(String),
    /// The tracee stopped in a way we did not expect.
    UnexpectedStop(String),
    /// No `syscall` instruction could be found in the tracee.
    NoSyscallInstruction,
    /// Reading `/proc/PID/...` failed.
    Io(std::io::Error),
    /// Not implemented for this architecture.
    Unsupported,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ptrace { op, errno } => write!(f, "ptrace({op}) failed: {errno}"),
            Self::Wait(errno) => write!(f, "waitpid failed: {errno}"),
            Self::Vanished(how) => write!(f, "process went away before the injection: {how}"),
            Self::UnexpectedStop(what) => write!(f, "unexpected tracee state: {what}"),
            Self::NoSyscallInstruction => f.write_str("no syscall instruction found in the target process"),
            Self::Io(e) => write!(f, "reading /proc failed: {e}"),
            Self::Unsupported => f.write_str("syscall injection is not supported on this architecture"),
        }
    }
}

impl std::error::Error for InjectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Ptrace { errno, .. } | Self::Wait(errno) => Some(errno),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for InjectError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Make thread `pid` (a process's main thread; the targets are
/// single-threaded) execute system call `nr` with arguments `args`.
///
/// The process need not have been started by, or be a child of, the caller,
/// but the caller must be allowed to ptrace it (root, in practice). It must
/// not already be traced. The injected call must not block indefinitely: we
/// wait for it to complete.
///
/// If the process dies from the call, the caller (as tracer) collects the
/// exit notification; a real parent that is not the caller still gets to
/// reap it afterwards. If the caller *is* the parent, the process has been
/// reaped by the time this returns.
pub fn inject_syscall(pid: i32, nr: i64, args: [u64; 6]) -> Result<Outcome, InjectError> {
    imp::inject_syscall(pid, nr, args)
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{InjectError, Outcome};

    pub(super) fn inject_syscall(_pid: i32, _nr: i64, _args: [u64; 6]) -> Result<Outcome, InjectError> {
        Err(InjectError::Unsupported)
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    //! How the restart of an interrupted system call is preserved:
    //!
    //! When we stop a thread that is blocked in a system call (PTRACE_INTERRUPT
    //! after PTRACE_SEIZE, or any signal-delivery-stop), the stop happens
    //! inside the kernel's signal handling on the way back to user space,
    //! *before* the kernel's restart fix-up. The registers then read
    //! `orig_rax = <nr of the interrupted call>`, `rax = -ERESTARTSYS /
    //! -ERESTARTNOINTR / -ERESTARTNOHAND / -ERESTART_RESTARTBLOCK`, and `rip`
    //! just past the `syscall` instruction. When the thread is resumed, the
    //! kernel looks at exactly these registers: if `orig_rax >= 0` and `rax`
    //! is a restart code, it sets `rax = orig_rax` (or `__NR_restart_syscall`)
    //! and `rip -= 2`, re-entering the call.
    //!
    //! So for the injection we set `orig_rax = -1` (no restart fix-up when we
    //! resume into our `syscall` instruction), and after the single-step we
    //! put back *all* the saved registers unchanged. The single-step stop is a
    //! signal-delivery-stop (SIGTRAP) in that same kernel path; detaching from
    //! it with no signal makes the kernel apply the restart fix-up to the
    //! restored registers, exactly as it would have without us. If the
    //! fix-up had already happened when we stopped the thread (`rip` already
    //! pointing at the `syscall` instruction, `rax == orig_rax`), restoring
    //! verbatim is equally right: the kernel does nothing more and the thread
    //! re-executes the instruction. The `restart_block` used by
    //! `-ERESTART_RESTARTBLOCK` lives in the kernel and is not touched by
    //! an ordinary injected call.
    //!
    //! A signal that arrives while we hold the thread is intercepted by
    //! ptrace; we suppress it while stepping and hand it back on detach (the
    //! first one) or re-send it with kill(2) (any others).

    use std::fs;
    use std::os::unix::fs::FileExt;

    use nix::errno::Errno;
    use nix::libc::{c_void, user_regs_struct};
    use nix::sys::ptrace::{self, AddressType, Event, Options};
    use nix::sys::signal::{self, Signal};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    use super::{InjectError, Outcome};

    const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
    const SYSCALL_INSN_LEN: u64 = 2;
    const PAGE_MASK: u64 = 0xfff;
    /// -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK.
    const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];
    /// How much of an executable mapping the fallback search reads.
    const SCAN_LIMIT: u64 = 16 << 20;

    fn pt(op: &'static str) -> impl FnOnce(Errno) -> InjectError {
        move |errno| InjectError::Ptrace { op, errno }
    }

    fn wait(pid: Pid) -> Result<WaitStatus, InjectError> {
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(InjectError::Wait(e)),
                Ok(status) => return Ok(status),
            }
        }
    }

    /// The attachment; on an early return it puts the saved registers back
    /// and detaches (best effort) so the target is not left stopped.
    struct Session {
        pid: Pid,
        /// The thread is in a ptrace-stop and still ours to release.
        stopped: bool,
        saved: Option<user_regs_struct>,
    }

    impl Session {
        /// The thread is gone (exited or killed): nothing to release.
        fn gone(&mut self) {
            self.stopped = false;
        }

        fn release(&mut self, sig: Option<Signal>) -> Result<(), InjectError> {
            if let Some(saved) = self.saved {
                ptrace::setregs(self.pid, saved).map_err(pt("SETREGS"))?;
            }
            self.stopped = false;
            ptrace::detach(self.pid, sig).map_err(pt("DETACH"))
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            if self.stopped {
                if let Some(saved) = self.saved {
                    let _ = ptrace::setregs(self.pid, saved);
                }
                let _ = ptrace::detach(self.pid, None);
            }
        }
    }

    pub(super) fn inject_syscall(pid: i32, nr: i64, args: [u64; 6]) -> Result<Outcome, InjectError> {
        let pid = Pid::from_raw(pid);
        ptrace::seize(pid, Options::empty()).map_err(pt("SEIZE"))?;
        // From here on the session is attached; once it is stopped, Drop
        // releases it on any error.
        let mut session = Session { pid, stopped: false, saved: None };
        if let Err(e) = ptrace::interrupt(pid) {
            // Still running: a plain detach fails (ESRCH). Leave it; the
            // kernel detaches when we exit. In practice only happens when
            // the process vanished.
            return Err(pt("INTERRUPT")(e));
        }

        // Signals we suppressed and must hand back.
        let mut held: Vec<Signal> = Vec::new();

        // Wait for the stop caused by the interrupt (or an earlier
        // signal-delivery-stop, which serves just as well).
        match wait(pid)? {
            WaitStatus::PtraceEvent(_, _, ev) if ev == Event::PTRACE_EVENT_STOP as i32 => {}
            WaitStatus::Stopped(_, sig) => held.push(sig),
            WaitStatus::Exited(_, code) => {
                return Err(InjectError::Vanished(format!("exited with status {code}")));
            }
            WaitStatus::Signaled(_, sig, _) => {
                return Err(InjectError::Vanished(format!("killed by {sig}")));
            }
            other => {
                // Detaching from a state we do not understand may fail;
                // try anyway.
                session.stopped = true;
                return Err(InjectError::UnexpectedStop(format!("first stop: {other:?}")));
            }
        }
        session.stopped = true;

        let saved = ptrace::getregs(pid).map_err(pt("GETREGS"))?;
        session.saved = Some(saved);
        let insn = find_syscall_insn(pid, &saved)?;

        let mut regs = saved;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX; // -1: no restart fix-up on resume
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.rip = insn;
        ptrace::setregs(pid, regs).map_err(pt("SETREGS"))?;

        let ret = loop {
            ptrace::step(pid, None).map_err(pt("SINGLESTEP"))?;
            session.stopped = false;
            let status = wait(pid)?;
            let sig = match status {
                WaitStatus::Exited(_, code) => {
                    session.gone();
                    return Ok(Outcome::Exited(code));
                }
                WaitStatus::Signaled(_, sig, _) => {
                    session.gone();
                    return Ok(Outcome::Killed(sig));
                }
                WaitStatus::Stopped(_, sig) => Some(sig),
                // A group-stop or a late PTRACE_EVENT_STOP: no signal.
                WaitStatus::PtraceEvent(..) => None,
                other => {
                    return Err(InjectError::UnexpectedStop(format!("while stepping: {other:?}")));
                }
            };
            session.stopped = true;
            let now = ptrace::getregs(pid).map_err(pt("GETREGS"))?;
            if now.rip == insn + SYSCALL_INSN_LEN {
                match sig {
                    Some(Signal::SIGTRAP) | None => break now.rax as i64,
                    Some(other) => {
                        return Err(InjectError::UnexpectedStop(format!(
                            "syscall executed but stopped for {other} instead of SIGTRAP"
                        )));
                    }
                }
            } else if now.rip == insn {
                // Stopped before the instruction ran (a signal arrived, or
                // the pending interrupt trap): hold the signal, step again.
                if let Some(sig) = sig {
                    held.push(sig);
                }
            } else {
                return Err(InjectError::UnexpectedStop(format!(
                    "after single-step rip={:#x}, expected {:#x} ({status:?})",
                    now.rip,
                    insn + SYSCALL_INSN_LEN
                )));
            }
        };

        let mut held = held.into_iter();
        session.release(held.next())?;
        for sig in held {
            let _ = signal::kill(pid, sig);
        }
        Ok(Outcome::Returned(ret))
    }

    fn read_word(pid: Pid, addr: u64) -> Option<[u8; 8]> {
        let ptr: AddressType = std::ptr::without_provenance_mut::<c_void>(addr as usize);
        ptrace::read(pid, ptr).ok().map(i64::to_ne_bytes)
    }

    fn is_syscall_at(pid: Pid, addr: u64) -> bool {
        read_word(pid, addr).is_some_and(|w| w[..2] == SYSCALL_INSN)
    }

    /// An address in the tracee holding the bytes `0f 05` in executable
    /// memory.
    fn find_syscall_insn(pid: Pid, regs: &user_regs_struct) -> Result<u64, InjectError> {
        let rip = regs.rip;
        let restart_pending = (regs.orig_rax as i64) >= 0 && RESTART_CODES.contains(&(regs.rax as i64));
        // Stopped in a system call before the restart fix-up: the
        // instruction that entered it is just behind rip. Otherwise rip-2
        // is only safe to try if it is in the same (executable) page.
        if rip >= SYSCALL_INSN_LEN
            && (restart_pending || rip & PAGE_MASK >= SYSCALL_INSN_LEN)
            && is_syscall_at(pid, rip - SYSCALL_INSN_LEN)
        {
            return Ok(rip - SYSCALL_INSN_LEN);
        }
        // Stopped after the fix-up: rip points at the instruction itself.
        if is_syscall_at(pid, rip) {
            return Ok(rip);
        }

        let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let mappings: Vec<_> = maps.lines().filter_map(parse_map_line).collect();
        if let Some(&(start, end, _, _)) = mappings.iter().find(|m| m.3 == "[vdso]") {
            let mut prev_last = None;
            let mut addr = start;
            while addr + 8 <= end {
                let Some(word) = read_word(pid, addr) else {
                    break;
                };
                if prev_last == Some(SYSCALL_INSN[0]) && word[0] == SYSCALL_INSN[1] {
                    return Ok(addr - 1);
                }
                if let Some(i) = word.windows(2).position(|w| w == SYSCALL_INSN) {
                    return Ok(addr + i as u64);
                }
                prev_last = Some(word[7]);
                addr += 8;
            }
        }

        // No vDSO (or none usable): any executable mapping will do.
        let mem = fs::File::open(format!("/proc/{pid}/mem"))?;
        for &(start, end, perms, name) in &mappings {
            if !perms.contains('x') || name == "[vsyscall]" || name == "[vdso]" {
                continue;
            }
            let len = (end - start).min(SCAN_LIMIT);
            let mut buf = vec![0u8; len as usize];
            if mem.read_exact_at(&mut buf, start).is_err() {
                continue;
            }
            if let Some(i) = buf.windows(2).position(|w| w == SYSCALL_INSN) {
                return Ok(start + i as u64);
            }
        }
        Err(InjectError::NoSyscallInstruction)
    }

    /// `start-end perms offset dev inode [name]` → (start, end, perms, name).
    fn parse_map_line(line: &str) -> Option<(u64, u64, &str, &str)> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let name = fields.nth(3).unwrap_or("");
        Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?, perms, name))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Child, ChildStdout, Command, Stdio};
    use std::sync::OnceLock;
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use nix::sys::signal::Signal;

    use super::{Outcome, inject_syscall};

    const SYS_READ: i64 = 0;
    const SYS_POLL: i64 = 7;
    const SYS_NANOSLEEP: i64 = 35;
    const SYS_GETPID: i64 = 39;
    const SYS_GETPPID: i64 = 110;
    const SYS_RESTART_SYSCALL: i64 = 219;
    const SYS_CLOCK_NANOSLEEP: i64 = 230;
    const SYS_EXIT_GROUP: i64 = 231;
    const SYS_PPOLL: i64 = 271;
    const SLEEPING: &[i64] = &[SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP, SYS_RESTART_SYSCALL];

    fn root_or_skip() -> bool {
        crate::require_root("inject")
    }

    /// The real interpreter, not a pyenv-style shim script, so the pid we
    /// spawn is the python process from the start.
    fn python() -> &'static str {
        static PY: OnceLock<String> = OnceLock::new();
        PY.get_or_init(|| {
            Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "python3".to_owned())
        })
    }

    fn pid_of(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    fn proc_state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// The system call the thread is blocked in, from /proc/PID/syscall.
    fn proc_syscall(pid: i32) -> Option<i64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    /// Wait until `pid` sleeps in one of `nrs`.
    fn wait_blocked_in(pid: i32, nrs: &[i64]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if proc_state(pid) == Some('S') && proc_syscall(pid).is_some_and(|n| nrs.contains(&n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} not blocked in {nrs:?}: state {:?}, syscall {:?}",
                proc_state(pid),
                proc_syscall(pid)
            );
            sleep(Duration::from_millis(5));
        }
    }

    fn read_line(out: &mut BufReader<ChildStdout>) -> String {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn spawn_python(script: &str) -> (Child, BufReader<ChildStdout>) {
        let mut child =
            Command::new(python()).args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        (child, out)
    }

    fn kill(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn getpid_returns_pid_and_sleep_continues() {
        if !root_or_skip() {
            return;
        }
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = pid_of(&child);
        sleep(Duration::from_millis(100));
        wait_blocked_in(pid, SLEEPING);

        let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
        assert_eq!(outcome, Outcome::Returned(i64::from(pid)));

        sleep(Duration::from_millis(100));
        assert_eq!(proc_state(pid), Some('S'), "not sleeping after the injection");
        // Back in its sleep (via restart_syscall, as the kernel restarts an
        // interrupted relative nanosleep).
        wait_blocked_in(pid, SLEEPING);
        // And the attachment is gone.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("TracerPid:\t0\n"), "{status}");

        // A second injection works the same.
        let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
        assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
        wait_blocked_in(pid, SLEEPING);
        kill(child);
    }

    #[test]
    fn interrupted_sleep_finishes_on_time() {
        if !root_or_skip() {
            return;
        }
        let start = Instant::now();
        let mut child = Command::new("sleep").arg("1").spawn().unwrap();
        let pid = pid_of(&child);
        wait_blocked_in(pid, SLEEPING);
        for _ in 0..3 {
            let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
            assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
            sleep(Duration::from_millis(50));
        }
        let status = child.wait().unwrap();
        let elapsed = start.elapsed();
        assert!(status.success(), "{status:?}");
        assert!(elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[test]
    fn exit_group_exits_with_status() {
        if !root_or_skip() {
            return;
        }
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = pid_of(&child);
        wait_blocked_in(pid, SLEEPING);
        let outcome = inject_syscall(pid, SYS_EXIT_GROUP, [42, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(outcome, Outcome::Exited(42));
        // We are both parent and tracer, so the tracer's wait reaped it.
        assert_eq!(proc_state(pid), None);
        assert!(!matches!(child.try_wait(), Ok(None)));
    }

    #[test]
    fn injected_error_is_negative_errno() {
        if !root_or_skip() {
            return;
        }
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = pid_of(&child);
        wait_blocked_in(pid, SLEEPING);
        // close(-1) → -EBADF.
        let outcome = inject_syscall(pid, 3, [u64::MAX, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(outcome, Outcome::Returned(-i64::from(libc::EBADF)));
        wait_blocked_in(pid, SLEEPING);
        kill(child);
    }

    /// poll(2) blocked with a timeout restarts (via restart_block) and
    /// times out normally; it must not see EINTR.
    #[test]
    fn interrupted_poll_restarts() {
        if !root_or_skip() {
            return;
        }
        let (mut child, mut out) = spawn_python(
            "import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             print('ready', flush=True)\n\
             r = libc.poll(None, 0, 1000)\n\
             print(r, ctypes.get_errno(), flush=True)\n",
        );
        let pid = pid_of(&child);
        assert_eq!(read_line(&mut out), "ready");
        let start = Instant::now();
        wait_blocked_in(pid, &[SYS_POLL, SYS_PPOLL, SYS_RESTART_SYSCALL]);
        for _ in 0..2 {
            let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
            assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
            wait_blocked_in(pid, &[SYS_POLL, SYS_PPOLL, SYS_RESTART_SYSCALL]);
        }
        assert_eq!(read_line(&mut out), "0 0", "poll did not restart cleanly");
        assert!(start.elapsed() >= Duration::from_millis(800));
        assert!(child.wait().unwrap().success());
    }

    /// read(2) on a pipe (-ERESTARTSYS) restarts and gets the data.
    #[test]
    fn interrupted_read_restarts() {
        if !root_or_skip() {
            return;
        }
        let (mut child, mut out) = spawn_python(
            "import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             buf = ctypes.create_string_buffer(8)\n\
             print('ready', flush=True)\n\
             r = libc.read(0, buf, 8)\n\
             print(r, ctypes.get_errno(), buf.value.decode(), flush=True)\n",
        );
        let pid = pid_of(&child);
        assert_eq!(read_line(&mut out), "ready");
        wait_blocked_in(pid, &[SYS_READ]);
        let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
        assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
        wait_blocked_in(pid, &[SYS_READ]);
        child.stdin.as_mut().unwrap().write_all(b"xy").unwrap();
        assert_eq!(read_line(&mut out), "2 0 xy", "read did not restart cleanly");
        assert!(child.wait().unwrap().success());
    }

    /// A process under a seccomp filter (installed with ctypes, no
    /// modules needed) is killed with SIGSYS for the forbidden call and
    /// unaffected by an allowed one.
    #[test]
    fn seccomp_kill_is_reported() {
        if !root_or_skip() {
            return;
        }
        let script = format!(
            "import ctypes, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             class F(ctypes.Structure):\n    \
                 _fields_ = [('code', ctypes.c_ushort), ('jt', ctypes.c_ubyte),\n                \
                             ('jf', ctypes.c_ubyte), ('k', ctypes.c_uint)]\n\
             class P(ctypes.Structure):\n    \
                 _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.POINTER(F))]\n\
             prog = (F * 6)(\n    \
                 F(0x20, 0, 0, 4),\n    \
                 F(0x15, 0, 3, 0xc000003e),\n    \
                 F(0x20, 0, 0, 0),\n    \
                 F(0x15, 0, 1, {SYS_GETPPID}),\n    \
                 F(0x06, 0, 0, 0x80000000),\n    \
                 F(0x06, 0, 0, 0x7fff0000))\n\
             p = P(6, prog)\n\
             L = ctypes.c_ulong\n\
             if libc.prctl(38, L(1), L(0), L(0), L(0)) != 0: sys.exit(3)\n\
             if libc.prctl(22, L(2), ctypes.byref(p), L(0), L(0)) != 0: sys.exit(4)\n\
             print('ready', flush=True)\n\
             sys.stdin.buffer.read(1)\n\
             print('survived', flush=True)\n"
        );
        let (mut child, mut out) = spawn_python(&script);
        let pid = pid_of(&child);
        assert_eq!(read_line(&mut out), "ready");
        wait_blocked_in(pid, &[SYS_READ]);

        let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
        assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
        wait_blocked_in(pid, &[SYS_READ]);

        let outcome = inject_syscall(pid, SYS_GETPPID, [0; 6]).unwrap();
        assert_eq!(outcome, Outcome::Killed(Signal::SIGSYS));
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        drop(child.stdin.take());
    }

    #[test]
    fn process_continues_normally_after_injections() {
        if !root_or_skip() {
            return;
        }
        let mut child = Command::new(python())
            .args(["-c", "import time,sys\nfor i in range(50): time.sleep(0.05)\nprint('done')"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = pid_of(&child);
        for delay in [500, 500] {
            sleep(Duration::from_millis(delay));
            let outcome = inject_syscall(pid, SYS_GETPID, [0; 6]).unwrap();
            assert_eq!(outcome, Outcome::Returned(i64::from(pid)));
        }
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        assert_eq!(stdout, "done\n");
        assert!(child.wait().unwrap().success());
    }
}
