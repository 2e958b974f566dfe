//! `strata import-chrony`: a chrony.conf (chrony.conf(5), chrony 4.3) turned into
//! strata's TOML, sans I/O. Every directive is either converted, with a comment naming
//! its chrony line above the TOML it became, or listed in [`Import::unsupported`] with
//! its line and the reason; so is every option strata lacks on a converted line.
//!
//! chrony's syntax, as its `CPS_NormalizeLine` reads it: one directive per line, words
//! separated by white space, directive and option names case-insensitive, a line whose
//! first non-blank character is `!`, `;`, `#` or `%` is a comment (there are no trailing
//! comments and no continuation lines). A line chronyd itself would refuse (unknown
//! option, missing or malformed value) is listed, not guessed at.
//!
//! The output is meant to pass `strata check-config` whatever the input: every value
//! is checked here against strata's own types before it is written.

use std::net::IpAddr;

use crate::{Burst, ClientLogLimit, Leak, NtpVersion, PollLog2, RateInterval, Stratum, UpstreamAddress};
use strata_proto::access::AccessList;

/// What became of a chrony.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// strata's configuration, commented.
    pub toml: String,
    /// Directives (or options of a directive) that were not converted, in line order.
    pub unsupported: Vec<Unsupported>,
}

/// One directive, or one option of it, left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// 1-based line in the chrony.conf.
    pub line: usize,
    /// The chrony directive, lower case (`refclock`, `server`, ...).
    pub directive: String,
    pub reason: String,
}

const ONE_FILE: &str = "strata reads one file";
const LOGS: &str = "strata writes no banner or change log; its [logs] are measurements, statistics, tracking and \
                    refclocks";
const CONTROL: &str = "the control plane is configured in strata's [control] (not yet)";
const NTS: &str = "strata has no NTS yet (neither as a server nor towards its upstreams)";
const RTC: &str = "strata does not track, trim or set the real-time clock (RTC)";
const OBSOLETE: &str = "obsolete: chrony 4 ignores it too";

/// Why a chrony directive that strata has no key for is left out.
fn unsupported_directive(directive: &str) -> &'static str {
    match directive {
        "include" | "confdir" | "sourcedir" => ONE_FILE,
        "cmdallow" | "cmddeny" | "cmdport" | "bindcmdaddress" | "bindcmddevice" | "cmdratelimit" => CONTROL,
        "logbanner" | "logchange" => LOGS,
        "mailonchange" => "strata sends no mail: alarms go to its log and to status.json",
        "rtcsync" => "strata does not turn on the kernel's RTC synchronisation (11-minute mode); the RTC is left alone",
        "rtcfile" | "rtcdevice" | "rtconutc" | "rtcautotrim" | "hwclockfile" => RTC,
        "keyfile" => "strata has no symmetric-key NTP authentication, so no key file",
        "ntsserverkey" | "ntsservercert" | "ntsport" | "ntsprocesses" | "maxntsconnections" | "ntsdumpdir"
        | "ntsntpserver" | "ntsrotate" | "ntsratelimit" | "ntstrustedcerts" | "nosystemcert" | "nocerttimecheck"
        | "ntsrefresh" => NTS,
        "authselectmode" => "strata has no NTP authentication, so nothing to select on",
        "peer" => "strata has no symmetric (peer) mode, only client/server",
        "initstepslew" => "strata has no initstepslew: `makestep` with a limit steps the clock at start",
        "manual" => "strata takes no manual time input",
        "broadcast" => "strata does not send NTP broadcasts",
        "user" => "strata runs each process as its own user: set them in [users]",
        "pidfile" => "strata writes no pid file: its processes' pids are in <runtime-dir>/status.json",
        "dumpdir" => "strata does not save measurement histories across restarts",
        "lock_all" => "strata does not lock its memory",
        "sched_priority" => "strata does not change its scheduling priority",
        "smoothtime" => "strata serves its clock's time unsmoothed",
        "maxdrift" => "the adjuster refuses frequencies beyond 500 ppm, by its compiled-in policy (policy/clock.toml)",
        "maxchange" => "the adjuster's panic threshold, in its compiled-in policy (policy/clock.toml), plays this role",
        "maxclockerror" | "corrtimeratio" | "clockprecision" => {
            "strata's discipline has no such setting: its fixed behaviour applies"
        }
        "fallbackdrift" => "strata has no fallback drifts",
        "tempcomp" => "strata has no temperature compensation",
        "leapsectz" => "strata takes leap seconds from its sources only, not from the time-zone database",
        "acquisitionport" | "bindacqaddress" | "bindacqdevice" => {
            "strata's upstream sockets use an ephemeral port on the default address"
        }
        "binddevice" => "strata binds addresses, not devices: put the interface's address in [server] listen",
        "dscp" => "strata does not set DSCP on its packets",
        "noclientlog" => "strata always keeps the client log (size it with [server] client-log-limit)",
        "ntpsigndsocket" => "strata has no MS-SNTP signing (Samba)",
        "ptpport" => "strata does not carry NTP over PTP",
        "commandkey" | "generatecommandkey" | "linux_hz" | "linux_freq_scale" => OBSOLETE,
        _ => "unknown directive",
    }
}

/// Why an option of `server`/`pool` that strata lacks is left out (the source itself
/// is converted without it).
fn unsupported_source_option(option: &str) -> Option<&'static str> {
    Some(match option {
        "burst" => "strata sends one request per poll",
        "offline" | "auto_offline" => "strata polls from the start and has no offline state",
        "copy" => "strata does not copy the server's reference",
        "maxdelayratio" | "maxdelaydevratio" | "maxdelayquant" | "mindelay" => "strata's delay test is `maxdelay` only",
        "asymmetry" | "offset" => "strata assumes a symmetric path with no fixed offset",
        "minsamples" | "maxsamples" => "strata's regressions keep chrony's default 6 to 64 samples",
        "filter" => "strata puts every sample into the source's regression",
        "polltarget" => "strata's poll adapts without a target",
        "presend" => "strata sends no presend request",
        "minstratum" => "strata uses the stratum the server reports",
        "extfield" => "strata sends no NTP extension fields",
        "certset" | "ntsport" => NTS,
        _ => return None,
    })
}

/// Options of `server`/`pool` that take a value (chrony.conf(5)), so that the value
/// is not read as the next option.
fn takes_value(option: &str) -> bool {
    matches!(
        option,
        "minpoll"
            | "maxpoll"
            | "key"
            | "maxdelay"
            | "maxdelayratio"
            | "maxdelaydevratio"
            | "maxdelayquant"
            | "mindelay"
            | "asymmetry"
            | "offset"
            | "minsamples"
            | "maxsamples"
            | "filter"
            | "polltarget"
            | "port"
            | "ntsport"
            | "presend"
            | "minstratum"
            | "version"
            | "extfield"
            | "maxsources"
            | "certset"
    )
}

/// A converted refclock's refid, whether it is a PPS, and its `lock` (the refid it
/// names, its line).
type RefclockLockInfo = (String, bool, Option<(String, usize)>);

/// A converted item: the comments above it (its chrony line, what was left out) and
/// its TOML.
struct Item {
    comments: Vec<String>,
    toml: String,
}

impl Item {
    fn new(line: &Line<'_>, toml: String) -> Item {
        Item { comments: vec![line.comment()], toml }
    }
}

/// One meaningful line of the chrony.conf.
struct Line<'a> {
    number: usize,
    text: &'a str,
    directive: String,
    args: Vec<&'a str>,
}

impl Line<'_> {
    fn comment(&self) -> String {
        format!("line {}: {}", self.number, comment_text(self.text))
    }
}

#[derive(Default)]
struct Importer {
    makestep: Option<Item>,
    minsources: Option<Item>,
    /// maxdistance, maxjitter, reselectdist, stratumweight, combinelimit,
    /// maxupdateskew, minsamples, maxsamples, maxslewrate: one each, in the file's
    /// order.
    selection: Vec<(String, Item)>,
    driftfile: Option<Item>,
    leapsecmode: Option<Item>,
    local_stratum: Option<Item>,
    ratelimit: Option<Item>,
    client_log_limit: Option<Item>,
    /// `hwtimestamp` lines, in order: each an element of `[server] hwtimestamp`.
    hwtimestamp: Vec<Item>,
    /// `log` lines: the comment and the kinds strata writes.
    log_kinds: Vec<(String, Vec<String>)>,
    /// `logdir`: the comment and the directory.
    logdir: Option<(String, String)>,
    /// `port` and `bindaddress`: the comment and the value of each.
    port: Option<(String, u16)>,
    bind_v4: Option<(String, IpAddr)>,
    bind_v6: Option<(String, IpAddr)>,
    /// `allow`/`deny` in order: the comment, the rule.
    access: Vec<(String, String)>,
    upstreams: Vec<Item>,
    refclocks: Vec<Item>,
    /// Per converted refclock, what a PPS `lock` needs to know of it.
    refclock_refids: Vec<RefclockLockInfo>,
    /// Whole lines left out: the comment, the reason.
    left_out: Vec<(String, String)>,
    unsupported: Vec<Unsupported>,
}

/// Convert a chrony.conf; the header calls it "chrony.conf".
pub fn import(text: &str) -> Import {
    import_from(text, "chrony.conf")
}

/// Convert a chrony.conf; `source` names it in the header comment.
pub fn import_from(text: &str, source: &str) -> Import {
    let mut importer = Importer::default();
    for (index, text) in text.lines().enumerate() {
        let mut words = text.split(is_chrony_space).filter(|w| !w.is_empty());
        let Some(first) = words.next() else { continue };
        if first.starts_with(['!', ';', '#', '%']) {
            continue;
        }
        let line =
            Line { number: index + 1, text: text.trim(), directive: first.to_ascii_lowercase(), args: words.collect() };
        importer.directive(&line);
    }
    importer.finish(source)
}

/// `isspace` in the C locale, as chrony splits words.
fn is_chrony_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

impl Importer {
    fn left_out(&mut self, line: &Line<'_>, reason: impl Into<String>) {
        let reason = reason.into();
        self.left_out.push((line.comment(), reason.clone()));
        self.unsupported.push(Unsupported { line: line.number, directive: line.directive.clone(), reason });
    }

    /// chronyd would refuse this line: nothing to convert.
    fn invalid(&mut self, line: &Line<'_>, why: impl std::fmt::Display) {
        self.left_out(line, format!("not valid chrony: {why}"));
    }

    /// An option of a converted line is left out.
    fn option_left_out(&mut self, line: &Line<'_>, item: &mut Item, reason: String) {
        item.comments.push(format!("  not converted: {}", comment_text(&reason)));
        self.unsupported.push(Unsupported { line: line.number, directive: line.directive.clone(), reason });
    }

    fn directive(&mut self, line: &Line<'_>) {
        match line.directive.as_str() {
            "server" => self.source(line, false),
            "pool" => self.source(line, true),
            "makestep" => self.makestep(line),
            "refclock" => self.refclock(line),
            "logdir" => match line.args[..] {
                [dir] => self.logdir = Some((line.comment(), dir.to_string())),
                _ => self.invalid(line, "`logdir` takes one directory"),
            },
            "log" => {
                let mut kinds = Vec::new();
                for &kind in &line.args {
                    match kind.to_ascii_lowercase().as_str() {
                        k @ ("measurements" | "statistics" | "tracking" | "refclocks") => kinds.push(k.to_string()),
                        other => self.unsupported.push(Unsupported {
                            line: line.number,
                            directive: line.directive.clone(),
                            reason: format!("strata has no `{other}` log"),
                        }),
                    }
                }
                self.log_kinds.push((line.comment(), kinds));
            }
            "driftfile" => match line.args[..] {
                [path] => set(&mut self.driftfile, Item::new(line, format!("driftfile = {}", toml_string(path)))),
                _ => self.invalid(line, "`driftfile` takes one file"),
            },
            d @ ("maxdistance" | "maxjitter" | "reselectdist" | "stratumweight" | "combinelimit" | "maxupdateskew"
            | "minsamples" | "maxsamples" | "maxslewrate") => match line.args[..] {
                [value] => match selection_value(d, value) {
                    Ok(toml) => {
                        let item = Item::new(line, format!("{d} = {toml}"));
                        match self.selection.iter_mut().find(|(name, _)| name == d) {
                            // As for the other directives, the last one counts.
                            Some((_, old)) => *old = item,
                            None => self.selection.push((d.to_string(), item)),
                        }
                    }
                    Err(why) => self.invalid(line, why),
                },
                _ => self.invalid(line, format!("`{d}` takes one number")),
            },
            "minsources" => match line.args[..] {
                [n] => match n.parse::<u8>() {
                    Ok(n) => set(&mut self.minsources, Item::new(line, format!("minsources = {n}"))),
                    Err(_) => self.invalid(line, format!("`{n}` is not a number of sources")),
                },
                _ => self.invalid(line, "`minsources` takes one number"),
            },
            "leapsecmode" => match line.args[..] {
                [mode] => {
                    let mode = mode.to_ascii_lowercase();
                    if matches!(mode.as_str(), "system" | "step" | "slew" | "ignore") {
                        set(&mut self.leapsecmode, Item::new(line, format!("leapsecmode = \"{mode}\"")));
                    } else {
                        self.invalid(line, "the mode is one of system, step, slew, ignore");
                    }
                }
                _ => self.invalid(line, "`leapsecmode` takes one mode"),
            },
            "allow" | "deny" => {
                // strata's access rules take chrony's syntax: the line as written.
                let rule =
                    std::iter::once(line.directive.as_str()).chain(line.args.iter().copied()).collect::<Vec<_>>();
                let rule = rule.join(" ");
                match AccessList::parse(std::slice::from_ref(&rule)) {
                    Ok(_) => self.access.push((line.comment(), rule)),
                    Err(e) => self.left_out(line, format!("strata's access rules: {}", e.kind)),
                }
            }
            "local" => self.local(line),
            "ratelimit" => self.ratelimit(line),
            "hwtimestamp" => self.hwtimestamp(line),
            "clientloglimit" => match line.args[..] {
                [n] => match n.parse::<i64>().map_err(|_| format!("`{n}` is not a number")) {
                    Ok(bytes) => match ClientLogLimit::try_from(bytes) {
                        Ok(_) => {
                            set(&mut self.client_log_limit, Item::new(line, format!("client-log-limit = {bytes}")))
                        }
                        Err(e) => self.left_out(line, format!("strata: {e}")),
                    },
                    Err(e) => self.invalid(line, e),
                },
                _ => self.invalid(line, "`clientloglimit` takes one number of bytes"),
            },
            "port" => match line.args[..] {
                [port] => match port.parse::<u16>() {
                    Ok(port) => self.port = Some((line.comment(), port)),
                    Err(_) => self.invalid(line, format!("`{port}` is not a port")),
                },
                _ => self.invalid(line, "`port` takes one port"),
            },
            "bindaddress" => match line.args[..] {
                [address] => match address.parse::<IpAddr>() {
                    Ok(ip @ IpAddr::V4(_)) => self.bind_v4 = Some((line.comment(), ip)),
                    Ok(ip @ IpAddr::V6(_)) => self.bind_v6 = Some((line.comment(), ip)),
                    Err(_) => self.invalid(line, format!("`{address}` is not an IP address")),
                },
                _ => self.invalid(line, "`bindaddress` takes one address"),
            },
            other => {
                let reason = unsupported_directive(other);
                self.left_out(line, reason);
            }
        }
    }

    /// `server ADDRESS [option]...` and `pool NAME [option]...` → one `[[upstream]]`.
    fn source(&mut self, line: &Line<'_>, pool: bool) {
        let Some((&address, options)) = line.args.split_first() else {
            return self.invalid(line, format!("`{}` needs a name or address", line.directive));
        };
        let mut keys = Vec::new();
        let mut port = None;
        let mut left_out = Vec::new();
        let mut words = options.iter();
        while let Some(&word) = words.next() {
            let option = word.to_ascii_lowercase();
            if matches!(option.as_str(), "iburst" | "prefer" | "noselect" | "trust" | "require" | "xleave") {
                set_key(&mut keys, format!("{option} = true"));
                continue;
            }
            if matches!(option.as_str(), "key" | "nts") {
                // Converting it without would trust an unauthenticated server.
                return self.left_out(
                    line,
                    format!(
                        "an authenticated source (`{option}`): strata has no NTP authentication yet, and without it \
                         the server would be trusted unauthenticated"
                    ),
                );
            }
            let value = if takes_value(&option) {
                match words.next() {
                    Some(&value) => Some(value),
                    None => return self.invalid(line, format!("`{option}` needs a value")),
                }
            } else {
                None
            };
            let parsed = match (option.as_str(), value) {
                ("minpoll" | "maxpoll", Some(v)) => int(v).map(|v| {
                    PollLog2::try_from(v).map(|_| format!("{option} = {v}")).map_err(|e| format!("strata: {e}"))
                }),
                ("version", Some(v)) => int(v).map(|v| {
                    NtpVersion::try_from(v).map(|_| format!("version = {v}")).map_err(|e| format!("strata: {e}"))
                }),
                ("maxsources", Some(v)) => int(v).map(|v| {
                    if !pool {
                        Err("only a pool has several sources".to_string())
                    } else if (1..=16).contains(&v) {
                        Ok(format!("maxsources = {v}"))
                    } else {
                        Err(format!("maxsources must be between 1 and 16, not {v}"))
                    }
                }),
                ("maxdelay", Some(v)) => float(v).map(|v| {
                    if v >= 0.0 {
                        Ok(format!("maxdelay = {}", toml_float(v)))
                    } else {
                        Err(format!("strata: maxdelay must be at least 0 s, not {v}"))
                    }
                }),
                ("port", Some(v)) => int(v).map(|v| match u16::try_from(v) {
                    Ok(p) if p > 0 => {
                        port = Some(p);
                        Ok(String::new())
                    }
                    _ => Err(format!("`{v}` is not a port")),
                }),
                (other, _) => match unsupported_source_option(other) {
                    Some(why) => Ok(Err(why.to_string())),
                    None => return self.invalid(line, format!("unknown option `{word}`")),
                },
            };
            match parsed {
                Ok(Ok(key)) if !key.is_empty() => set_key(&mut keys, key),
                Ok(Ok(_)) => {}
                Ok(Err(why)) => left_out.push(format!("option `{option}`: {why}")),
                Err(why) => return self.invalid(line, format!("`{option}`: {why}")),
            }
        }
        let written = match (address.parse::<IpAddr>(), port) {
            (Ok(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
            (Ok(_), None) => address.to_string(),
            (_, Some(port)) => format!("{address}:{port}"),
            (Err(_), None) if address.contains(':') => {
                return self.left_out(line, format!("strata: {address:?} is neither an IP address nor a host name"));
            }
            (Err(_), None) => address.to_string(),
        };
        if let Err(e) = UpstreamAddress::try_from(written.clone()) {
            return self.left_out(line, format!("strata: {e}"));
        }
        let mut first = vec![format!("address = {}", toml_string(&written))];
        if pool {
            first.push("pool = true".into());
        }
        let item = self.table_item(line, first.into_iter().chain(keys), left_out);
        self.upstreams.push(item);
    }

    /// A converted `[[table]]` item: its keys, one per line, and the options of its
    /// line that were left out (named in a comment and in the unsupported list).
    fn table_item(&mut self, line: &Line<'_>, keys: impl Iterator<Item = String>, left_out: Vec<String>) -> Item {
        let toml: Vec<String> = keys.collect();
        let mut item = Item::new(line, toml.join("\n"));
        for reason in left_out {
            self.option_left_out(line, &mut item, reason);
        }
        item
    }

    /// `refclock DRIVER PARAMETER [options]`: PHC, PPS, SOCK and SHM have strata drivers.
    fn refclock(&mut self, line: &Line<'_>) {
        let [driver, parameter, ref options @ ..] = line.args[..] else {
            return self.invalid(line, "`refclock` needs a driver and its parameter");
        };
        // chrony's PHC and PPS parameters may carry `:clear`, `:extpps`, ... after the path.
        let (path, extras) = parameter.split_once(':').unwrap_or((parameter, ""));
        let driver = driver.to_ascii_uppercase();
        let written = match driver.as_str() {
            "PHC" => format!("phc:{path}"),
            "PPS" => format!("pps:{path}"),
            "SOCK" => format!("sock:{path}"),
            "SHM" => format!("shm:{path}"),
            other => return self.left_out(line, format!("strata reads PHC, PPS, SOCK and SHM refclocks, not {other}")),
        };
        if let Err(e) = crate::RefclockDriver::try_from(written.clone()) {
            return self.left_out(line, format!("strata: {e}"));
        }
        let pps = driver == "PPS";
        let mut keys = Vec::new();
        let mut left_out = Vec::new();
        for extra in extras.split(':').filter(|e| !e.is_empty()) {
            if pps && extra.eq_ignore_ascii_case("clear") {
                set_key(&mut keys, "clear = true".to_string());
            } else {
                left_out.push(format!("driver option `{extra}`: strata's {driver} driver has no such option"));
            }
        }
        let mut refid = crate::Refclock::default_refid();
        let mut lock = None;
        let mut words = options.iter();
        while let Some(&word) = words.next() {
            let option = word.to_ascii_lowercase();
            if matches!(option.as_str(), "prefer" | "noselect" | "trust" | "require" | "tai") {
                set_key(&mut keys, format!("{option} = true"));
                continue;
            }
            let Some(&value) = (!matches!(option.as_str(), "pps" | "local")).then(|| words.next()).flatten() else {
                left_out.push(format!("option `{option}`: not supported by strata"));
                continue;
            };
            let key = match option.as_str() {
                "offset" | "delay" | "precision" => float(value).map(|v| format!("{option} = {}", toml_float(v))),
                "stratum" => int(value).and_then(|v| match u8::try_from(v) {
                    Ok(s) if s < 16 => Ok(format!("stratum = {s}")),
                    _ => Err(format!("`{v}` is not a stratum")),
                }),
                "refid" if (1..=4).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) => {
                    refid = value.to_string();
                    Ok(format!("refid = {}", toml_string(value)))
                }
                // chrony's values, checked against strata's ranges.
                "poll" | "dpoll" | "filter" | "maxlockage" => int(value).and_then(|v| {
                    let checked = match option.as_str() {
                        "poll" | "dpoll" => crate::RefclockPoll::try_from(v).map(drop),
                        "filter" => crate::FilterLength::try_from(v).map(drop),
                        _ => crate::MaxLockAge::try_from(v).map(drop),
                    };
                    checked.map(|()| format!("{option} = {v}")).map_err(|e| format!("strata: {e}"))
                }),
                "maxdispersion" => float(value).and_then(|v| {
                    crate::MaxDispersion::try_from(v).map(|_| format!("maxdispersion = {}", toml_float(v)))
                }),
                // Resolved once every refclock is known (it may lock to a later line).
                "lock" if pps => {
                    lock = Some(value.to_string());
                    continue;
                }
                _ => {
                    left_out.push(format!("option `{option} {value}`: not supported by strata"));
                    continue;
                }
            };
            match key {
                Ok(key) => set_key(&mut keys, key),
                Err(why) if why.starts_with("strata: ") => left_out.push(format!("option `{option} {value}`: {why}")),
                Err(why) => return self.invalid(line, format!("`{option}`: {why}")),
            }
        }
        let driver = format!("driver = {}", toml_string(&written));
        let item = self.table_item(line, std::iter::once(driver).chain(keys), left_out);
        self.refclocks.push(item);
        self.refclock_refids.push((refid, pps, lock.map(|l| (l, line.number))));
    }

    /// Each PPS `lock` names the refid of a converted non-PPS refclock, or is left out.
    fn resolve_locks(&mut self) {
        for i in 0..self.refclocks.len() {
            let Some((lock, number)) = self.refclock_refids[i].2.clone() else { continue };
            let known = self.refclock_refids.iter().any(|(refid, pps, _)| !pps && *refid == lock);
            if known {
                self.refclocks[i].toml.push_str(&format!("\nlock = {}", toml_string(&lock)));
            } else {
                let reason = format!("option `lock {lock}`: no converted SOCK, SHM or PHC refclock has refid {lock}");
                self.refclocks[i].comments.push(format!("  not converted: {}", comment_text(&reason)));
                self.unsupported.push(Unsupported { line: number, directive: "refclock".into(), reason });
            }
        }
    }

    /// `makestep THRESHOLD LIMIT`.
    fn makestep(&mut self, line: &Line<'_>) {
        let [threshold, limit] = line.args[..] else {
            return self.invalid(line, "`makestep` takes a threshold and a limit");
        };
        match (float(threshold), limit.parse::<i32>()) {
            (Ok(threshold), Ok(limit)) if threshold >= 0.0 => set(
                &mut self.makestep,
                Item::new(line, format!("makestep = {{ threshold = {}, limit = {limit} }}", toml_float(threshold))),
            ),
            (Ok(_), Ok(_)) => self.left_out(line, "strata: the threshold must be a finite number of seconds, >= 0"),
            (Err(why), _) => self.invalid(line, format!("threshold: {why}")),
            (_, Err(_)) => self.invalid(line, format!("`{limit}` is not a number of updates")),
        }
    }

    /// `local [stratum N] [orphan] [distance D] ...`: strata knows the stratum only.
    fn local(&mut self, line: &Line<'_>) {
        let mut stratum = 10; // chrony's default
        let mut left_out = Vec::new();
        let mut words = line.args.iter();
        while let Some(&word) = words.next() {
            let option = word.to_ascii_lowercase();
            match option.as_str() {
                "orphan" => left_out.push("option `orphan`: strata has no orphan mode".to_string()),
                "stratum" | "distance" | "activate" | "waitsynced" | "waitunsynced" => {
                    let Some(&value) = words.next() else {
                        return self.invalid(line, format!("`{option}` needs a value"));
                    };
                    if option == "stratum" {
                        match int(value) {
                            Ok(n) if Stratum::try_from(n).is_ok() => stratum = n,
                            Ok(_) | Err(_) => return self.invalid(line, "the stratum is a number from 1 to 15"),
                        }
                    } else if let Err(why) = float(value) {
                        return self.invalid(line, format!("`{option}`: {why}"));
                    } else {
                        left_out.push(format!(
                            "option `{option}`: strata serves its local stratum as soon as it has no selected source"
                        ));
                    }
                }
                _ => return self.invalid(line, format!("unknown option `{word}`")),
            }
        }
        let mut item = Item::new(line, format!("local-stratum = {stratum}"));
        for reason in left_out {
            self.option_left_out(line, &mut item, reason);
        }
        set(&mut self.local_stratum, item);
    }

    /// `ratelimit [interval I] [burst B] [leak L]`, chrony's defaults for the rest.
    fn ratelimit(&mut self, line: &Line<'_>) {
        let (mut interval, mut burst, mut leak) = (3, 8, 2);
        let mut left_out = Vec::new();
        let mut words = line.args.iter();
        while let Some(&word) = words.next() {
            let option = word.to_ascii_lowercase();
            if !matches!(option.as_str(), "interval" | "burst" | "leak") {
                return self.invalid(line, format!("unknown option `{word}`"));
            }
            let value = match words.next().map(|v| int(v)) {
                Some(Ok(value)) => value,
                Some(Err(why)) => return self.invalid(line, format!("`{option}`: {why}")),
                None => return self.invalid(line, format!("`{option}` needs a value")),
            };
            let checked = match option.as_str() {
                "interval" => RateInterval::try_from(value).map(|_| interval = value),
                "burst" => Burst::try_from(value).map(|_| burst = value),
                _ => Leak::try_from(value).map(|_| leak = value),
            };
            if let Err(e) = checked {
                left_out.push(format!("option `{option}`: strata: {e}; chrony's default kept"));
            }
        }
        let mut item =
            Item::new(line, format!("ratelimit = {{ interval = {interval}, burst = {burst}, leak = {leak} }}"));
        for reason in left_out {
            self.option_left_out(line, &mut item, reason);
        }
        set(&mut self.ratelimit, item);
    }

    /// `hwtimestamp INTERFACE [rxfilter F] [txcomp S] [rxcomp S] [...]`.
    fn hwtimestamp(&mut self, line: &Line<'_>) {
        use crate::{Compensation, InterfaceName};
        let Some((&interface, options)) = line.args.split_first() else {
            return self.invalid(line, "`hwtimestamp` needs an interface");
        };
        if let Err(why) = InterfaceName::try_from(interface.to_string()) {
            return self.left_out(line, format!("strata: {why}"));
        }
        if self
            .hwtimestamp
            .iter()
            .any(|item| item.toml.starts_with(&format!("{{ interface = {}", toml_string(interface))))
        {
            return self.left_out(line, format!("strata takes one line per interface; {interface} has one above"));
        }
        let mut toml = format!("{{ interface = {}", toml_string(interface));
        let mut left_out = Vec::new();
        let mut words = options.iter();
        while let Some(&word) = words.next() {
            let option = word.to_ascii_lowercase();
            match option.as_str() {
                "nocrossts" => left_out.push(
                    "option `nocrossts`: strata reads the NIC's clock between two system clock reads anyway"
                        .to_string(),
                ),
                "rxfilter" | "txcomp" | "rxcomp" | "minpoll" | "maxpoll" | "minsamples" | "maxsamples"
                | "precision" => {
                    let Some(&value) = words.next() else {
                        return self.invalid(line, format!("`{option}` needs a value"));
                    };
                    match option.as_str() {
                        "rxfilter" => {
                            let filter = value.to_ascii_lowercase();
                            if !matches!(filter.as_str(), "any" | "all" | "ntp" | "ptp" | "none") {
                                return self.invalid(line, "the rxfilter is one of any, all, ntp, ptp, none");
                            }
                            toml.push_str(&format!(", rxfilter = {}", toml_string(&filter)));
                        }
                        "txcomp" | "rxcomp" => match float(value) {
                            Ok(v) => match Compensation::try_from(v) {
                                Ok(_) => toml.push_str(&format!(", {option} = {}", toml_float(v))),
                                Err(e) => left_out.push(format!("option `{option}`: strata: {e}")),
                            },
                            Err(why) => return self.invalid(line, format!("`{option}`: {why}")),
                        },
                        _ => left_out.push(format!(
                            "option `{option}`: strata reads the NIC's clock every second and maps with its last                              samples"
                        )),
                    }
                }
                _ => return self.invalid(line, format!("unknown option `{word}`")),
            }
        }
        toml.push_str(" }");
        let mut item = Item::new(line, toml);
        for reason in left_out {
            self.option_left_out(line, &mut item, reason);
        }
        self.hwtimestamp.push(item);
    }

    fn finish(mut self, source: &str) -> Import {
        self.resolve_locks();
        let mut out = format!(
            "# strata configuration imported from {} by `strata import-chrony`.\n\
             # Above each item: the chrony.conf line it comes from. Lines that could not be\n\
             # converted are listed at the end.\n",
            comment_text(source)
        );
        out.push_str("\n[clock]\n# chrony steers the system clock; so does this backend.\nbackend = \"system\"\n");
        for item in [self.makestep, self.minsources, self.driftfile, self.leapsecmode].into_iter().flatten() {
            push_item(&mut out, &item);
        }
        for (_, item) in &self.selection {
            push_item(&mut out, item);
        }

        let mut server = String::new();
        if self.port.is_some() || self.bind_v4.is_some() || self.bind_v6.is_some() {
            let port = self.port.as_ref().map_or(123, |(_, port)| *port);
            let mut comments: Vec<&str> = Vec::new();
            for (comment, _) in [&self.port].into_iter().flatten() {
                comments.push(comment);
            }
            for (comment, _) in [&self.bind_v4, &self.bind_v6].into_iter().flatten() {
                comments.push(comment);
            }
            let toml = if port == 0 {
                comments.push("  port 0: chrony serves no client");
                "listen = []".to_string()
            } else {
                let v4 = self.bind_v4.as_ref().map_or(IpAddr::from([0, 0, 0, 0]), |(_, ip)| *ip);
                let v6 = self.bind_v6.as_ref().map_or(IpAddr::from([0u16; 8]), |(_, ip)| *ip);
                let v4 = std::net::SocketAddr::new(v4, port).to_string();
                let v6 = std::net::SocketAddr::new(v6, port).to_string();
                format!("listen = [{}, {}]", toml_string(&v4), toml_string(&v6))
            };
            push_item(&mut server, &Item { comments: comments.into_iter().map(String::from).collect(), toml });
        }
        if let Some(item) = &self.local_stratum {
            push_item(&mut server, item);
        }
        if !self.access.is_empty() {
            server.push_str("# chrony's allow/deny lines, in order.\naccess = [\n");
            for (comment, rule) in &self.access {
                server.push_str(&format!("    # {comment}\n    {},\n", toml_string(rule)));
            }
            server.push_str("]\n");
        }
        for item in [&self.ratelimit, &self.client_log_limit].into_iter().flatten() {
            push_item(&mut server, item);
        }
        if !self.hwtimestamp.is_empty() {
            server.push_str("# chrony's hwtimestamp lines.\nhwtimestamp = [\n");
            for item in &self.hwtimestamp {
                for comment in &item.comments {
                    server.push_str(&format!("    # {comment}\n"));
                }
                server.push_str(&format!("    {},\n", item.toml));
            }
            server.push_str("]\n");
        }
        if !server.is_empty() {
            out.push_str("\n[server]\n");
            out.push_str(&server);
        }

        for item in &self.upstreams {
            out.push_str("\n[[upstream]]\n");
            push_item(&mut out, item);
        }
        for item in &self.refclocks {
            out.push_str("\n[[refclock]]\n");
            push_item(&mut out, item);
        }

        let kinds: Vec<&String> = self.log_kinds.iter().flat_map(|(_, k)| k).collect();
        match (&self.logdir, kinds.is_empty()) {
            (Some((dir_comment, dir)), false) => {
                out.push_str(&format!("\n[logs]\n# {}\ndir = {}\n", dir_comment, toml_string(dir)));
                for (comment, _) in &self.log_kinds {
                    out.push_str(&format!("# {comment}\n"));
                }
                let list: Vec<String> = kinds.iter().map(|k| toml_string(k)).collect();
                out.push_str(&format!("kinds = [{}]\n", list.join(", ")));
            }
            _ => {
                // No [logs] table: `log` without `logdir` (chrony writes no file then),
                // or `logdir` with nothing to log. The lines are still shown.
                let comments: Vec<&String> =
                    self.logdir.iter().map(|(c, _)| c).chain(self.log_kinds.iter().map(|(c, _)| c)).collect();
                if !comments.is_empty() {
                    out.push_str("\n# No statistics logs: chrony needs both `log` and `logdir` to write one.\n");
                    for comment in comments {
                        out.push_str(&format!("# {comment}\n"));
                    }
                }
            }
        }

        if !self.left_out.is_empty() {
            out.push_str("\n# Not converted:\n");
            for (comment, reason) in &self.left_out {
                out.push_str(&format!("# {comment}\n#   -> {}\n", comment_text(reason)));
            }
        }
        let mut unsupported = self.unsupported;
        unsupported.sort_by_key(|u| u.line);
        Import { toml: out, unsupported }
    }
}

/// chrony keeps the last of a directive given twice; the earlier line stays in the
/// comments, marked.
/// A selection or regression directive's value as TOML, in the range `[clock]`
/// accepts (so that the imported file loads).
fn selection_value(directive: &str, value: &str) -> Result<String, String> {
    use crate::{CombineLimit, DistanceSeconds, SampleCount, SkewPpm, SlewRatePpm};
    if matches!(directive, "minsamples" | "maxsamples") {
        let n: i64 = value.parse().map_err(|_| format!("`{value}` is not a number of samples"))?;
        return SampleCount::try_from(n).map(|n| n.0.to_string());
    }
    let x: f64 = value.parse().map_err(|_| format!("`{value}` is not a number"))?;
    match directive {
        "combinelimit" => CombineLimit::try_from(x).map(|v| format!("{:?}", v.0)),
        "maxupdateskew" => SkewPpm::try_from(x).map(|v| format!("{:?}", v.0)),
        "maxslewrate" => SlewRatePpm::try_from(x).map(|v| format!("{:?}", v.0)),
        _ => DistanceSeconds::try_from(x).map(|v| format!("{:?}", v.0)),
    }
}

/// Add `key = value` to a table's keys; an option given twice on one chrony line
/// keeps its last value, as chronyd does (and TOML allows each key once).
fn set_key(keys: &mut Vec<String>, key: String) {
    let name = |k: &str| k.split(" = ").next().unwrap_or_default().to_string();
    keys.retain(|k| name(k) != name(&key));
    keys.push(key);
}

fn set(slot: &mut Option<Item>, mut item: Item) {
    if let Some(old) = slot.take() {
        let mut comments = old.comments;
        if let Some(first) = comments.first_mut() {
            first.push_str("  (replaced by a later line: chrony keeps the last)");
        }
        comments.append(&mut item.comments);
        item.comments = comments;
    }
    *slot = Some(item);
}

fn push_item(out: &mut String, item: &Item) {
    for comment in &item.comments {
        out.push_str("# ");
        out.push_str(comment);
        out.push('\n');
    }
    out.push_str(&item.toml);
    out.push('\n');
}

fn int(word: &str) -> Result<i64, String> {
    word.parse::<i64>().map_err(|_| format!("`{word}` is not an integer"))
}

fn float(word: &str) -> Result<f64, String> {
    match word.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{word}` is not a number")),
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_float(v: f64) -> String {
    toml::Value::Float(v).to_string()
}

/// Text that may go into a TOML comment: no control character but tab (TOML 1.0).
fn comment_text(s: &str) -> String {
    s.chars().map(|c| if (c.is_control() && c != '\t') || c == '\u{7f}' { '\u{fffd}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Config, LeapSecMode, MakeStep, RateLimitConfig, RxFilter};

    /// Import `text` and parse the result as strata would: it must always be valid.
    fn import_ok(text: &str) -> (Config, Import) {
        let import = import(text);
        let config = Config::from_str(&import.toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("{e}\n--- input:\n{text}\n--- output:\n{}", import.toml));
        (config, import)
    }

    fn reasons(import: &Import) -> Vec<(usize, &str, &str)> {
        import.unsupported.iter().map(|u| (u.line, u.directive.as_str(), u.reason.as_str())).collect()
    }

    #[test]
    fn a_server_with_every_option_strata_has() {
        let (c, import) = import_ok(
            "server 192.0.2.1 iburst minpoll 4 maxpoll 8 prefer noselect trust require maxdelay 0.5 version 3\n",
        );
        assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
        let u = &c.upstream[0];
        assert_eq!(u.address, UpstreamAddress::Ip("192.0.2.1:123".parse().unwrap()));
        assert!(!u.pool && u.iburst && u.prefer && u.noselect && u.trust && u.require);
        assert_eq!((u.minpoll, u.maxpoll, u.maxdelay, u.version), (PollLog2(4), PollLog2(8), 0.5, NtpVersion(3)));
        assert!(import.toml.contains("# line 1: server 192.0.2.1 iburst"), "{}", import.toml);
    }

    #[test]
    fn a_pool_keeps_its_maxsources_and_a_port_goes_into_the_address() {
        let (c, _) = import_ok(
            "pool pool.ntp.org iburst maxsources 3\nserver 2001:db8::1 port 1123\nserver ntp.example port 11\n",
        );
        assert!(c.upstream[0].pool);
        assert_eq!(c.upstream[0].maxsources, 3);
        assert_eq!(c.upstream[0].address, UpstreamAddress::Name { host: "pool.ntp.org".into(), port: 123 });
        assert_eq!(c.upstream[1].address, UpstreamAddress::Ip("[2001:db8::1]:1123".parse().unwrap()));
        assert_eq!(c.upstream[2].address, UpstreamAddress::Name { host: "ntp.example".into(), port: 11 });
    }

    #[test]
    fn an_option_given_twice_keeps_its_last_value_as_chronyd_does() {
        // Found by the import_chrony fuzz target: the output had duplicate keys.
        let (config, _) = import_ok(
            "refclock PHC /dev/ptp0 poll 0 offset 0.1 refid PTP poll 2 offset 0.2 prefer prefer\n\
             server 192.0.2.1 minpoll 4 iburst minpoll 6 iburst\n",
        );
        assert_eq!(config.refclock[0].poll.0, 2);
        assert_eq!(config.refclock[0].offset, 0.2);
        assert_eq!(config.upstream[0].minpoll.0, 6);
    }

    #[test]
    fn options_strata_lacks_are_named_and_the_server_is_kept() {
        let (c, import) = import_ok("\n\nserver ntp.example iburst burst xleave maxsamples 8\n");
        assert_eq!(c.upstream.len(), 1);
        assert!(c.upstream[0].iburst && c.upstream[0].xleave);
        let r = reasons(&import);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|(line, directive, _)| *line == 3 && *directive == "server"));
        for option in ["`burst`", "`maxsamples`"] {
            assert!(r.iter().any(|(_, _, reason)| reason.contains(option)), "{option}: {r:?}");
            assert!(import.toml.contains(&format!("#   not converted: option {option}")), "{}", import.toml);
        }
    }

    #[test]
    fn an_authenticated_source_is_not_converted_into_an_unauthenticated_one() {
        let (c, import) = import_ok("server a.example key 5\nserver b.example nts iburst\n");
        assert!(c.upstream.is_empty());
        let r = reasons(&import);
        assert_eq!(r.len(), 2);
        assert!(r[0].2.contains("`key`") && r[1].2.contains("`nts`"), "{r:?}");
    }

    #[test]
    fn lines_chronyd_would_refuse_are_listed() {
        let (c, import) = import_ok(
            "server\nserver a.example minpoll\nserver a.example frobnicate\nmakestep 1\nmakestep x 3\n\
             server bad_host!\nserver a.example minpoll 30\n",
        );
        let r = reasons(&import);
        assert_eq!(r.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7], "{r:?}");
        assert!(r[..5].iter().all(|r| r.2.starts_with("not valid chrony")), "{r:?}");
        assert!(r[5].2.contains("neither an IP address nor a host name"), "{r:?}");
        // Out of strata's range: the option goes, the server stays.
        assert!(r[6].2.contains("`minpoll`") && r[6].2.contains("between -6 and 24"), "{r:?}");
        assert_eq!(c.upstream.len(), 1);
        assert_eq!(c.upstream[0].minpoll, PollLog2(6));
    }

    #[test]
    fn clock_directives() {
        let (c, import) =
            import_ok("makestep 1.0 3\ndriftfile /var/lib/chrony/drift\nminsources 2\nleapsecmode slew\n");
        assert!(import.unsupported.is_empty());
        assert_eq!(c.clock.makestep, Some(MakeStep { threshold: 1.0, limit: 3 }));
        assert_eq!(c.clock.driftfile.as_deref(), Some(Path::new("/var/lib/chrony/drift")));
        assert_eq!(c.clock.minsources, 2);
        assert_eq!(c.clock.leapsecmode, LeapSecMode::Slew);
        assert_eq!(c.clock.backend.0, strata_proto::ipc::ClockBackendKind::System);
        let (c, _) = import_ok("makestep 0.1 -1\n");
        assert_eq!(c.clock.makestep, Some(MakeStep { threshold: 0.1, limit: -1 }));
    }

    #[test]
    fn selection_and_regression_directives() {
        let (c, import) = import_ok(
            "maxdistance 1.5\nmaxjitter 0.2\nreselectdist 0.001\nstratumweight 0\ncombinelimit 2\n\
             maxupdateskew 100.0\nminsamples 4\nmaxsamples 32\nmaxdistance 2\nmaxslewrate 1000\n",
        );
        assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
        let s = c.clock.selection();
        assert_eq!((s.max_distance_s, s.max_jitter_s, s.reselect_distance_s), (2.0, 0.2, 0.001));
        assert_eq!((s.stratum_weight_s, s.combine_limit, s.max_update_skew_ppm), (0.0, 2.0, 100.0));
        assert_eq!((s.min_samples, s.max_samples), (4, 32));
        assert_eq!(c.clock.maxslewrate.map(|r| r.0), Some(1000.0));
        // Out of range or not a number: left out with the line, the rest converted.
        let (c, import) = import_ok("maxsamples 200\nmaxjitter soon\n");
        assert_eq!(c.clock.selection(), strata_proto::ipc::SelectionSettings::default());
        let lines: Vec<usize> = import.unsupported.iter().map(|u| u.line).collect();
        assert_eq!(lines, [1, 2]);
    }

    #[test]
    fn a_directive_given_twice_keeps_the_last_as_chrony_does() {
        let (c, import) = import_ok("makestep 10 1\nmakestep 1.0 3\n");
        assert_eq!(c.clock.makestep, Some(MakeStep { threshold: 1.0, limit: 3 }));
        assert!(import.toml.contains("# line 1: makestep 10 1  (replaced by a later line"), "{}", import.toml);
        assert!(import.toml.contains("# line 2: makestep 1.0 3\n"), "{}", import.toml);
    }

    #[test]
    fn allow_and_deny_keep_their_order_and_text() {
        let (c, import) =
            import_ok("allow 192.168.0.0/16\ndeny 192.168.5\nAllow all 10/8\nallow ntp.example\ndeny\nallow ::1\n");
        assert_eq!(
            c.server.access_rules(),
            ["allow 192.168.0.0/16", "deny 192.168.5", "allow all 10/8", "deny", "allow ::1"]
        );
        let r = reasons(&import);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0, r[0].1), (4, "allow"));
        assert!(r[0].2.contains("host name"), "{r:?}");
    }

    #[test]
    fn local_stratum() {
        let (c, import) = import_ok("local stratum 2\n");
        assert_eq!(c.server.local_stratum, Some(Stratum(2)));
        assert!(import.unsupported.is_empty());
        let (c, _) = import_ok("local\n");
        assert_eq!(c.server.local_stratum, Some(Stratum(10)), "chrony's default");
        let (c, import) = import_ok("local stratum 3 orphan distance 0.1\n");
        assert_eq!(c.server.local_stratum, Some(Stratum(3)));
        let r = reasons(&import);
        assert!(r.len() == 2 && r[0].2.contains("`orphan`") && r[1].2.contains("`distance`"), "{r:?}");
        let (c, import) = import_ok("local stratum 16\n");
        assert_eq!(c.server.local_stratum, None);
        assert_eq!(import.unsupported.len(), 1);
    }

    #[test]
    fn ratelimit_and_clientloglimit() {
        let (c, import) = import_ok("ratelimit interval 1 burst 16\nclientloglimit 1048576\n");
        assert!(import.unsupported.is_empty());
        let limit = RateLimitConfig { interval: RateInterval(1), burst: Burst(16), leak: Leak(2), kod: None };
        assert_eq!(c.server.ratelimit, Some(limit));
        assert_eq!(c.server.client_log_limit, ClientLogLimit(1_048_576));
        let (c, _) = import_ok("ratelimit\n");
        assert_eq!(c.server.ratelimit, Some(RateLimitConfig::default()));
        let (c, import) = import_ok("ratelimit leak 9\nclientloglimit 100\n");
        assert_eq!(c.server.ratelimit.unwrap().leak, Leak(2));
        assert_eq!(c.server.client_log_limit, ClientLogLimit(524_288));
        assert_eq!(import.unsupported.len(), 2);
    }

    #[test]
    fn port_and_bindaddress_make_the_listen_addresses() {
        let (c, _) = import_ok("port 11123\n");
        assert_eq!(c.server.listen, ["0.0.0.0:11123".parse().unwrap(), "[::]:11123".parse().unwrap()]);
        let (c, _) = import_ok("bindaddress 192.0.2.7\nport 1123\nbindaddress ::1\n");
        assert_eq!(c.server.listen, ["192.0.2.7:1123".parse().unwrap(), "[::1]:1123".parse().unwrap()]);
        let (c, _) = import_ok("bindaddress 192.0.2.7\n");
        assert_eq!(c.server.listen, ["192.0.2.7:123".parse().unwrap(), "[::]:123".parse().unwrap()]);
        let (c, _) = import_ok("port 0\n");
        assert!(c.server.listen.is_empty());
        let (c, import) = import_ok("bindaddress eth0\n");
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(import.unsupported.len(), 1);
    }

    #[test]
    fn the_seeds_refclock_converts_whole() {
        let (c, import) =
            import_ok("refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0 stratum 1 precision 1e-9 prefer\n");
        assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
        let r = &c.refclock[0];
        assert_eq!(r.driver, crate::RefclockDriver::Phc("/dev/ptp0".into()));
        assert_eq!((r.poll.0, r.dpoll.0, r.offset, r.stratum, r.precision, r.prefer), (3, -2, 0.0, 1, 1e-9, true));
    }

    #[test]
    fn a_pps_locked_to_nmea_converts_with_its_edge_and_lock() {
        let (c, import) = import_ok(
            "refclock PPS /dev/pps0:clear lock NMEA maxlockage 3 filter 16 maxdispersion 0.0001 refid PPS\n\
             refclock SHM 0 refid NMEA offset 0.2 noselect\n",
        );
        assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
        let pps = &c.refclock[0];
        assert_eq!(pps.driver, crate::RefclockDriver::Pps("/dev/pps0".into()));
        assert!(pps.clear_edge());
        assert_eq!(pps.lock.as_ref().map(|l| l.get_ref().as_str()), Some("NMEA"));
        assert_eq!((pps.maxlockage.0, pps.filter.0, pps.maxdispersion.map(|m| m.0)), (3, 16, Some(0.0001)));
        // A lock to a refid no converted refclock has is named and left out.
        let (c, import) = import_ok("refclock PPS /dev/pps0 lock GPS2\nrefclock PPS /dev/pps1 refid GPS2\n");
        assert!(c.refclock[0].lock.is_none());
        assert_eq!(
            reasons(&import),
            [(1, "refclock", "option `lock GPS2`: no converted SOCK, SHM or PHC refclock has refid GPS2")]
        );
        // Values beyond strata's ranges are named; the refclock converts without them.
        let (c, import) = import_ok("refclock SHM 0 poll 20 filter 0\n");
        assert_eq!(c.refclock[0].poll.0, 4);
        assert_eq!(import.unsupported.len(), 2, "{:?}", import.unsupported);
        assert!(import.unsupported[0].reason.starts_with("option `poll 20`: strata: a refclock poll interval"));
        // `lock` on a PHC means nothing.
        let (_, import) = import_ok("refclock PHC /dev/ptp0 lock NMEA\n");
        assert_eq!(reasons(&import), [(1, "refclock", "option `lock NMEA`: not supported by strata")]);
    }

    #[test]
    fn log_and_logdir_become_the_logs_table() {
        let (c, import) = import_ok("logdir /var/log/chrony\nlog measurements statistics tracking rtc\n");
        let logs = c.logs.expect("a [logs] table");
        assert_eq!(logs.dir, Path::new("/var/log/chrony"));
        assert_eq!(logs.kinds.len(), 3);
        assert!(
            import.unsupported.iter().any(|u| u.line == 2 && u.reason.contains("`rtc`")),
            "{:?}",
            import.unsupported
        );
        let (c, _) = import_ok("log tracking\n");
        assert!(c.logs.is_none());
    }

    #[test]
    fn hwtimestamp_lines_become_server_hwtimestamp() {
        let (c, import) = import_ok(
            "hwtimestamp eth0 rxfilter ntp txcomp 2e-7 minpoll -2\nhwtimestamp * rxcomp -1e-7\nhwtimestamp eth0\n",
        );
        let hw = &c.server.hwtimestamp;
        assert_eq!(hw.len(), 2, "{}", import.toml);
        assert_eq!(
            (hw[0].interface.get_ref().0.as_str(), hw[0].rxfilter, hw[0].txcomp.0),
            ("eth0", RxFilter::Ntp, 2e-7)
        );
        assert_eq!((hw[1].interface.get_ref().0.as_str(), hw[1].rxcomp.0), ("*", -1e-7));
        let r = reasons(&import);
        assert!(r.iter().any(|r| r.0 == 1 && r.2.contains("`minpoll`")), "{r:?}");
        assert!(r.iter().any(|r| r.0 == 3 && r.2.contains("one line per interface")), "{r:?}");
        assert!(
            import.toml.contains("    # line 1: hwtimestamp eth0 rxfilter ntp txcomp 2e-7 minpoll -2\n"),
            "{}",
            import.toml
        );
    }

    #[test]
    fn unsupported_directives_say_why() {
        let text = "include /etc/chrony/conf.d/*.conf\nconfdir /etc/chrony/conf.d\n\
                    refclock PHC /dev/ptp0:nocrossts poll 3 dpoll -2 offset 0\ncmdallow 127.0.0.1\ncmdport 0\n\
                    bindcmdaddress ::1\nlog measurements statistics\nlogdir /var/log/chrony\nrtcsync\n\
                    smoothtime 400 0.01\nkeyfile /etc/chrony.keys\nntsserverkey /k.pem\nfrobnicate 1\n";
        let (_, import) = import_ok(text);
        let r = reasons(&import);
        let expected = [
            (1, "include", ONE_FILE),
            (2, "confdir", ONE_FILE),
            (3, "refclock", "driver option `nocrossts`: strata's PHC driver has no such option"),
            (4, "cmdallow", CONTROL),
            (5, "cmdport", CONTROL),
            (6, "bindcmdaddress", CONTROL),
            (10, "smoothtime", unsupported_directive("smoothtime")),
            (11, "keyfile", unsupported_directive("keyfile")),
            (12, "ntsserverkey", NTS),
            (13, "frobnicate", "unknown directive"),
        ];
        for e in expected {
            assert!(r.contains(&e), "{e:?} not in {r:?}");
        }
        assert!(r.iter().any(|r| r.0 == 9 && r.2.contains("RTC")), "{r:?}");
        // The refclock's text stays in the output for the operator.
        assert!(
            import.toml.contains("# line 3: refclock PHC /dev/ptp0:nocrossts poll 3 dpoll -2 offset 0\n"),
            "{}",
            import.toml
        );
    }

    #[test]
    fn comments_blank_lines_and_case() {
        let (c, import) = import_ok("# a\n  ! b\n;c\n\t%d\n\n   \nSERVER a.example IBURST\nMakeStep 1 1\n");
        assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
        assert!(c.upstream[0].iburst);
        assert!(c.clock.makestep.is_some());
        assert!(import.toml.contains("# line 7: SERVER a.example IBURST"), "{}", import.toml);
    }

    #[test]
    fn the_header_names_the_source() {
        assert!(
            import_from("", "/etc/chrony/chrony.conf")
                .toml
                .starts_with("# strata configuration imported from /etc/chrony/chrony.conf by `strata import-chrony`.")
        );
    }

    /// Random lines from chrony's vocabulary, numbers and odd characters: never a
    /// panic, always a valid strata configuration, every line accounted for.
    #[test]
    fn random_lines_never_panic_and_always_give_a_valid_config() {
        const WORDS: &[&str] = &[
            "server",
            "pool",
            "peer",
            "refclock",
            "makestep",
            "driftfile",
            "minsources",
            "leapsecmode",
            "allow",
            "deny",
            "local",
            "stratum",
            "orphan",
            "distance",
            "ratelimit",
            "interval",
            "burst",
            "leak",
            "kod",
            "clientloglimit",
            "port",
            "bindaddress",
            "include",
            "log",
            "cmdallow",
            "iburst",
            "minpoll",
            "maxpoll",
            "prefer",
            "noselect",
            "trust",
            "require",
            "maxdelay",
            "version",
            "maxsources",
            "key",
            "nts",
            "xleave",
            "system",
            "slew",
            "all",
            "0",
            "1",
            "-1",
            "3",
            "16",
            "123",
            "65536",
            "-7",
            "1e-9",
            "nan",
            "inf",
            "0.5",
            "192.0.2.1",
            "::1",
            "10/8",
            "1.2.3.0/25",
            "a.example",
            "pool.ntp.org",
            "/var/lib/x",
            "#",
            "!",
            "%",
            ";",
            "\"",
            "'",
            "\\",
            "[x]",
            "=",
            "\u{0}",
            "\r",
            "\x0b",
            "\u{7f}",
            "é",
            "\u{2028}",
            "\u{feff}",
            "ntp.example:99",
            "[::1]",
            "port",
            "4096",
            "2147483648",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            // xorshift64*: deterministic, so a failure reproduces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..next(12) {
                for i in 0..next(8) {
                    if i > 0 {
                        text.push_str([" ", "\t", "  "][next(3)]);
                    }
                    if next(10) == 0 {
                        text.push(char::from_u32(next(0x11_0000) as u32).unwrap_or('x'));
                    } else {
                        text.push_str(WORDS[next(WORDS.len())]);
                    }
                }
                text.push_str(["\n", "\r\n"][next(2)]);
            }
            let (_, import) = import_ok(&text);
            for (index, line) in text.lines().enumerate() {
                let mut words = line.split(is_chrony_space).filter(|w| !w.is_empty());
                match words.next() {
                    Some(w) if !w.starts_with(['!', ';', '#', '%']) => {
                        let tag = format!("# line {}: ", index + 1);
                        let tag_in_array = format!("    # line {}: ", index + 1);
                        assert!(
                            import.toml.contains(&format!("\n{tag}")) || import.toml.contains(&tag_in_array),
                            "line {} not accounted for:\n{text}\n---\n{}",
                            index + 1,
                            import.toml
                        );
                    }
                    _ => {}
                }
            }
            assert!(import.unsupported.iter().all(|u| u.line >= 1 && u.line <= text.lines().count()));
        }
    }
}
