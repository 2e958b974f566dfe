//! Which clients are served: chrony's `allow` and `deny` directives (chrony.conf(5),
//! "NTP server"), sans I/O. The rules are parsed once, at start; [`AccessList::allows`]
//! then runs for every packet and neither allocates nor hashes.
//!
//! The semantics are chrony's, and so is the data structure that defines them (chrony
//! `addrfilt.c`): a tree of 16-entry tables, one level per four bits of the address,
//! one tree per family. A rule marks the table entries its subnet covers; a lookup
//! walks the client's address down the tree and keeps the last mark it passes. Hence:
//! - the most specific rule decides (`allow 192.168.0.0/16` then `deny 192.168.5.0/24`
//!   denies 192.168.5.x and allows the rest of 192.168/16, in either order);
//! - among rules that mark the same entries, the later one wins;
//! - `allow all X` / `deny all X` also discards every earlier rule inside X;
//! - with no rule, nothing is allowed (chrony serves no client by default).
//!
//! One consequence is chrony's, documented in chrony.conf(5) and kept here on purpose so
//! that a chrony configuration means the same thing in strata:
//! a prefix length that is not a multiple of four marks several entries of the table one
//! level down, so two rules whose prefix lengths round up to the same level (1.2.3.0/25
//! and 1.2.3.0/28) share entries, and there the later rule wins even if it is the
//! shorter prefix. Rules at different levels (1.2.3.0/28 and 1.2.3.0/29) are resolved
//! by specificity.
//!
//! chrony walks that tree for every packet: up to 33 dependent loads for an IPv6
//! address. Here the tree exists only while parsing; it is then flattened into the
//! sorted start addresses of the ranges it allows and denies, adjacent ranges with the
//! same verdict merged, so the verdicts alternate and a lookup is one binary search
//! (about 8 comparisons for 100 rules). The answers are the tree's, address for address.
//!
//! Departures from chrony, each because strata's engine is sans-I/O or stricter:
//! - no host names: chrony resolves them once at start; the config layer may do that
//!   and pass the address, this module never does I/O;
//! - an IPv4-mapped IPv6 client (`::ffff:a.b.c.d`, as a dual-stack socket reports an
//!   IPv4 client) is checked against the IPv4 rules, and a rule written as a mapped
//!   subnet of /96 or longer is stored as the IPv4 rule it means. chrony binds separate
//!   IPv4 and IPv6 sockets and never sees mapped addresses;
//! - an octet above 255 in the short IPv4 form (`allow 300.1`) is an error, where
//!   chrony's parser reads numbers with `sscanf`;
//! - host bits below the prefix are cleared (`allow 1.2.3.200/25` is 1.2.3.128/25);
//!   chrony's `set_subnet` (as read in its addrfilt.c) starts from the unmasked
//!   nibble, which for such a rule runs past the end of the table.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bits of the address consumed per level of the tree (chrony `NBITS`).
const LEVEL_BITS: u32 = 4;
/// Entries in one table.
const FANOUT: usize = 1 << LEVEL_BITS;

/// Where the two trees start in [`Tree::nodes`].
const ROOT_V4: usize = 0;
const ROOT_V6: usize = 1;
/// [`Node::children`] of a node without a table below it. A table can never start at
/// index 0, which holds the IPv4 root.
const NO_CHILDREN: u32 = 0;

/// What a table entry says about the addresses under it (chrony `State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Deny,
    Allow,
    /// No rule marked this entry: whatever the entry above says.
    AsParent,
}

/// One table entry: its mark and, if a rule needed finer detail under it, where its own
/// table of [`FANOUT`] entries starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    children: u32,
    mark: Mark,
}

impl Node {
    const UNMARKED: Node = Node { children: NO_CHILDREN, mark: Mark::AsParent };
}

/// chrony's rule tables, both families, while the rules are applied.
struct Tree {
    /// The two roots first, then every table as [`FANOUT`] consecutive nodes. Tables
    /// cut off by an `all` rule stay in the array, unreachable, until [`Tree::flatten`].
    nodes: Vec<Node>,
}

/// One family's address space cut into ranges, allowed and denied in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ranges<A> {
    /// Where each range starts, ascending; the first is always 0. Never empty.
    starts: Vec<A>,
    /// The verdict for the first range; the next has the other one, and so on.
    first_allowed: bool,
}

impl<A: Copy + Ord> Ranges<A> {
    fn uniform(zero: A, allowed: bool) -> Ranges<A> {
        Ranges { starts: vec![zero], first_allowed: allowed }
    }

    fn allows(&self, address: A) -> bool {
        // How many ranges start at or below the address: at least one, since the first
        // starts at 0; the address is in the last of them.
        let ranges_up_to = self.starts.partition_point(|&start| start <= address);
        (ranges_up_to % 2 == 1) == self.first_allowed
    }
}

/// The rules, ready to check addresses against. Immutable once built, so it can be
/// shared between worker threads (`Arc<AccessList>`) without a lock. Two lists compare
/// equal exactly when they give the same verdict for every address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessList {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

/// Which rule is wrong, where in it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// Index of the rule in the slice given to [`AccessList::parse`].
    pub index: usize,
    /// Byte offset, inside that rule's text, of the word that is wrong (0 for an empty
    /// rule), for the config layer's column.
    pub offset: usize,
    pub kind: RuleErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleErrorKind {
    /// Nothing but white space.
    Empty,
    /// The first word is neither `allow` nor `deny`.
    UnknownDirective(String),
    /// Neither an IPv4 nor an IPv6 address, nor chrony's short IPv4 form (`3.4.5`).
    BadAddress(String),
    /// A host name: chrony resolves it at start, strata does not (see the module doc).
    HostName(String),
    /// What follows `/` is not a decimal prefix length.
    BadPrefixLength(String),
    /// A prefix length longer than the address.
    PrefixTooLong { prefix_len: u32, max: u32 },
    /// Another word after the subnet.
    TrailingWords,
}

impl fmt::Display for RuleErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleErrorKind::Empty => f.write_str("empty access rule"),
            RuleErrorKind::UnknownDirective(word) => write!(f, "`{word}` is neither `allow` nor `deny`"),
            RuleErrorKind::BadAddress(word) => write!(f, "`{word}` is not an IP address or subnet"),
            RuleErrorKind::HostName(word) => {
                write!(f, "`{word}` looks like a host name; access rules take addresses only")
            }
            RuleErrorKind::BadPrefixLength(word) => write!(f, "`{word}` is not a prefix length"),
            RuleErrorKind::PrefixTooLong { prefix_len, max } => {
                write!(f, "prefix length {prefix_len} is longer than the address ({max} bits)")
            }
            RuleErrorKind::TrailingWords => f.write_str("unexpected word after the subnet"),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access rule {} (byte {}): {}", self.index, self.offset, self.kind)
    }
}

impl std::error::Error for RuleError {}

/// The address family a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    /// A bare `allow` / `deny`: both families, prefix length 0.
    Both,
}

/// One parsed rule. The address is left-aligned in 128 bits for both families, so
/// that one walk serves both trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// `allow all` / `deny all`: discard earlier, more specific rules inside the subnet.
    reset: bool,
    family: Family,
    address: u128,
    prefix_len: u32,
}

fn v4_bits(address: Ipv4Addr) -> u128 {
    u128::from(u32::from(address)) << 96
}

/// The address a lookup checks: IPv4, including an IPv4-mapped IPv6 address, against
/// the IPv4 rules; any other IPv6 address against the IPv6 rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for Client {
    fn from(address: IpAddr) -> Client {
        match address {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6(v6.into()),
            },
        }
    }
}

/// The `depth`-th group of [`LEVEL_BITS`] bits of a left-aligned address (chrony
/// `get_subnet`).
fn nibble(address: u128, depth: u32) -> usize {
    ((address >> (128 - LEVEL_BITS * (depth + 1))) & (FANOUT as u128 - 1)) as usize
}

/// Split a rule into its words and their byte offsets.
fn words(rule: &str) -> impl Iterator<Item = (usize, &str)> {
    // Both pointers are into `rule`, so the difference is the word's offset in it.
    rule.split_whitespace().map(move |word| (word.as_ptr() as usize - rule.as_ptr() as usize, word))
}

impl Rule {
    /// Parse one rule in chrony's syntax: `allow|deny [all] [subnet]` (chrony
    /// `CPS_ParseAllowDeny`). Errors carry the byte offset of the offending word.
    fn parse(text: &str) -> Result<Rule, (usize, RuleErrorKind)> {
        let mut words = words(text).peekable();
        let Some((_, directive)) = words.next() else { return Err((0, RuleErrorKind::Empty)) };
        // chrony matches directive names case-insensitively (`strcasecmp` in conf.c) and
        // `all` exactly (`strcmp` in cmdparse.c).
        let allow = if directive.eq_ignore_ascii_case("allow") {
            true
        } else if directive.eq_ignore_ascii_case("deny") {
            false
        } else {
            return Err((0, RuleErrorKind::UnknownDirective(directive.to_owned())));
        };
        let reset = words.next_if(|&(_, word)| word == "all").is_some();
        let Some((offset, subnet)) = words.next() else {
            // No subnet: every address of both families (chrony.conf(5): "The seventh
            // directive allows access from all addresses (both IPv4 or IPv6)").
            return Ok(Rule { allow, reset, family: Family::Both, address: 0, prefix_len: 0 });
        };
        if let Some((offset, _)) = words.next() {
            return Err((offset, RuleErrorKind::TrailingWords));
        }
        let (family, address, prefix_len) = parse_subnet(subnet).map_err(|kind| (offset, kind))?;
        Ok(Rule { allow, reset, family, address, prefix_len })
    }
}

/// `address[/prefix_len]`, where the address may also be chrony's short IPv4 form of
/// one to three octets whose count gives the default prefix length (`3.4.5` is
/// 3.4.5.0/24, `0/0` all IPv4 addresses). A full address without a prefix length is one
/// host.
fn parse_subnet(subnet: &str) -> Result<(Family, u128, u32), RuleErrorKind> {
    let (address_text, prefix_text) = match subnet.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (subnet, None),
    };
    let (family, address, default_prefix_len) = if let Ok(v4) = address_text.parse::<Ipv4Addr>() {
        (Family::V4, v4_bits(v4), 32)
    } else if let Ok(v6) = address_text.parse::<Ipv6Addr>() {
        (Family::V6, u128::from(v6), 128)
    } else if let Some((address, octets)) = parse_short_v4(address_text) {
        (Family::V4, address, 8 * octets)
    } else if address_text.bytes().any(|b| b.is_ascii_alphabetic()) && !address_text.contains(':') {
        return Err(RuleErrorKind::HostName(address_text.to_owned()));
    } else {
        return Err(RuleErrorKind::BadAddress(address_text.to_owned()));
    };
    let prefix_len = match prefix_text {
        None => default_prefix_len,
        Some(text) => {
            // Decimal digits only: no sign, no space, nothing after.
            if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RuleErrorKind::BadPrefixLength(text.to_owned()));
            }
            let prefix_len: u32 = text.parse().map_err(|_| RuleErrorKind::BadPrefixLength(text.to_owned()))?;
            let max = if family == Family::V4 { 32 } else { 128 };
            if prefix_len > max {
                return Err(RuleErrorKind::PrefixTooLong { prefix_len, max });
            }
            prefix_len
        }
    };
    // A mapped subnet of /96 or longer names IPv4 addresses only, and a mapped client is
    // looked up in the IPv4 tree: store it there, or it could never match.
    let (family, address, prefix_len) =
        if family == Family::V6 && prefix_len >= 96 && Ipv6Addr::from(address).to_ipv4_mapped().is_some() {
            (Family::V4, address << 96, prefix_len - 96)
        } else {
            (family, address, prefix_len)
        };
    // Host bits below the prefix do not select anything (see the module doc). Both
    // families are left-aligned, so one mask fits both.
    let mask = if prefix_len == 0 { 0 } else { u128::MAX << (128 - prefix_len) };
    Ok((family, address & mask, prefix_len))
}

/// chrony's short IPv4 form: one to three decimal octets, `10`, `192.168`, `3.4.5`.
/// Returns the left-aligned address and the number of octets.
fn parse_short_v4(text: &str) -> Option<(u128, u32)> {
    let mut address: u32 = 0;
    let mut octets = 0;
    for part in text.split('.') {
        if octets == 3 || part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let octet: u8 = part.parse().ok()?;
        address |= u32::from(octet) << (24 - 8 * octets);
        octets += 1;
    }
    Some((u128::from(address) << 96, octets))
}

impl AccessList {
    /// No client is served: chrony's default, with no `allow` directive.
    pub fn deny_all() -> AccessList {
        AccessList { v4: Ranges::uniform(0, false), v6: Ranges::uniform(0, false) }
    }

    /// Every client is served, of both families: a lone bare `allow`.
    pub fn allow_all() -> AccessList {
        AccessList { v4: Ranges::uniform(0, true), v6: Ranges::uniform(0, true) }
    }

    /// Build the list from rules in chrony's syntax, applied in order, e.g. `allow
    /// 192.168.0.0/16`, `deny 192.168.5`, `allow all 10.0.0.0/8`, `deny all`, `allow
    /// 2001:db8::/32`, `allow 127.0.0.1`, `allow`. No rule at all denies every client.
    pub fn parse(rules: &[String]) -> Result<AccessList, RuleError> {
        let mut tree = Tree::new();
        for (index, text) in rules.iter().enumerate() {
            let rule = Rule::parse(text).map_err(|(offset, kind)| RuleError { index, offset, kind })?;
            tree.apply(&rule);
        }
        let v4 = tree.flatten(ROOT_V4);
        let v6 = tree.flatten(ROOT_V6);
        Ok(AccessList {
            // The IPv4 tree holds left-aligned addresses, and no rule reaches below
            // its 32 bits, so every start is a whole IPv4 address shifted up.
            v4: Ranges {
                starts: v4.starts.iter().map(|&start| (start >> 96) as u32).collect(),
                first_allowed: v4.first_allowed,
            },
            v6,
        })
    }

    /// Is `client` served? One binary search over the range starts of its family; no
    /// allocation.
    pub fn allows(&self, client: IpAddr) -> bool {
        match Client::from(client) {
            Client::V4(address) => self.v4.allows(address),
            Client::V6(address) => self.v6.allows(address),
        }
    }
}

impl Tree {
    /// Nothing marked but the roots, which deny: chrony `ADF_CreateTable`.
    fn new() -> Tree {
        Tree { nodes: vec![Node { children: NO_CHILDREN, mark: Mark::Deny }; 2] }
    }

    /// Mark the rule's subnet (chrony `set_subnet`): walk down whole nibbles of the
    /// prefix; a prefix that ends inside a nibble marks every entry of the next table
    /// that it covers (a /25 marks 8 entries of the table at level 7).
    fn apply(&mut self, rule: &Rule) {
        let mark = if rule.allow { Mark::Allow } else { Mark::Deny };
        let roots: &[usize] = match rule.family {
            Family::V4 => &[ROOT_V4],
            Family::V6 => &[ROOT_V6],
            Family::Both => &[ROOT_V4, ROOT_V6],
        };
        for &root in roots {
            let mut node = root;
            for depth in 0..rule.prefix_len / LEVEL_BITS {
                let first = self.open(node);
                node = first + nibble(rule.address, depth);
            }
            let partial_bits = rule.prefix_len % LEVEL_BITS;
            let (first, count) = if partial_bits == 0 {
                (node, 1)
            } else {
                let count = 1 << (LEVEL_BITS - partial_bits);
                // The prefix bits of this nibble, host bits cleared (already masked by
                // `parse_subnet`; masked again so no rule can index past the table).
                let entry = nibble(rule.address, rule.prefix_len / LEVEL_BITS) & !(count - 1);
                (self.open(node) + entry, count)
            };
            for entry in &mut self.nodes[first..first + count] {
                entry.mark = mark;
                if rule.reset {
                    // chrony `close_node`: forget every rule below.
                    entry.children = NO_CHILDREN;
                }
            }
        }
    }

    /// The index of `node`'s first child, adding an unmarked table if it has none
    /// (chrony `open_node`).
    fn open(&mut self, node: usize) -> usize {
        if self.nodes[node].children == NO_CHILDREN {
            let first = self.nodes.len();
            self.nodes.extend([Node::UNMARKED; FANOUT]);
            self.nodes[node].children = u32::try_from(first).expect("an access table beyond 4 G entries");
        }
        self.nodes[node].children as usize
    }

    /// The ranges one root's tree allows and denies, as a chrony lookup would find them
    /// (chrony `check_ip_in_node`), over left-aligned addresses.
    fn flatten(&self, root: usize) -> Ranges<u128> {
        let mut starts = vec![];
        let mut first_allowed = None;
        self.visit(root, 0, 0, false, &mut |start, allowed| match first_allowed {
            None => {
                first_allowed = Some(allowed);
                starts.push(start);
            }
            // A new range only where the verdict changes.
            Some(first) if allowed != (first == (starts.len() % 2 == 1)) => starts.push(start),
            Some(_) => {}
        });
        Ranges { starts, first_allowed: first_allowed.unwrap_or(false) }
    }

    /// Report, in address order, where each leaf under `node` starts and whether a walk
    /// ending there allows; `inherited` is the last mark above (deny at the root).
    fn visit(&self, node: usize, depth: u32, start: u128, inherited: bool, leaf: &mut impl FnMut(u128, bool)) {
        let Node { children, mark } = self.nodes[node];
        let allowed = match mark {
            Mark::Allow => true,
            Mark::Deny => false,
            Mark::AsParent => inherited,
        };
        if children == NO_CHILDREN {
            return leaf(start, allowed);
        }
        // Only a rule's own prefix opens a table, so nothing is below depth 31 (a /128
        // marks a node at depth 32 without opening it): the shift stays in range.
        let shift = 128 - LEVEL_BITS * (depth + 1);
        for i in 0..FANOUT {
            self.visit(children as usize + i, depth + 1, start | ((i as u128) << shift), allowed, leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AccessList {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        AccessList::parse(&rules).unwrap_or_else(|e| panic!("{rules:?}: {e}"))
    }

    fn error(rules: &[&str]) -> RuleError {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        AccessList::parse(&rules).expect_err("rules should be refused")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[track_caller]
    fn check(list: &AccessList, allowed: &[&str], denied: &[&str]) {
        for a in allowed {
            assert!(list.allows(ip(a)), "{a} should be allowed by {list:?}");
        }
        for a in denied {
            assert!(!list.allows(ip(a)), "{a} should be denied by {list:?}");
        }
    }

    #[test]
    fn no_rule_denies_everyone() {
        for list in [AccessList::deny_all(), list(&[])] {
            check(&list, &[], &["127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "2001:db8::1"]);
        }
        assert_eq!(list(&[]), AccessList::deny_all());
    }

    #[test]
    fn allow_all_allows_both_families() {
        for list in [AccessList::allow_all(), list(&["allow"]), list(&["allow all"])] {
            check(
                &list,
                &["127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "2001:db8::1", "::ffff:1.2.3.4"],
                &[],
            );
        }
        assert_eq!(list(&["allow"]), AccessList::allow_all());
    }

    #[test]
    fn a_bare_deny_after_allow_denies_both_families() {
        check(&list(&["allow", "deny"]), &[], &["1.2.3.4", "2001:db8::1"]);
    }

    #[test]
    fn zero_prefixes_cover_one_family() {
        // chrony.conf(5): "allow 0/0" and "allow ::/0" allow all IPv4 and all IPv6.
        check(&list(&["allow 0/0"]), &["1.2.3.4", "255.255.255.255", "::ffff:10.0.0.1"], &["::1", "2001:db8::1"]);
        check(&list(&["allow ::/0"]), &["::1", "2001:db8::1", "fe80::1"], &["1.2.3.4", "::ffff:10.0.0.1"]);
        check(&list(&["allow 0.0.0.0/0"]), &["8.8.8.8"], &["::2"]);
    }

    #[test]
    fn man_page_forms() {
        check(&list(&["allow 1.2.3.4"]), &["1.2.3.4"], &["1.2.3.5", "1.2.3.3", "::1.2.3.4"]);
        check(&list(&["allow 3.4.5.0/24"]), &["3.4.5.0", "3.4.5.255"], &["3.4.6.0", "3.4.4.255"]);
        // "the prefix length is determined by the number of dots"
        check(&list(&["allow 3.4.5"]), &["3.4.5.0", "3.4.5.255"], &["3.4.6.0", "3.4.4.255"]);
        assert_eq!(list(&["allow 3.4.5"]), list(&["allow 3.4.5.0/24"]));
        assert_eq!(list(&["allow 192.168"]), list(&["allow 192.168.0.0/16"]));
        assert_eq!(list(&["allow 10"]), list(&["allow 10.0.0.0/8"]));
        // The short form takes an explicit prefix length too.
        assert_eq!(list(&["allow 192.168/8"]), list(&["allow 192.0.0.0/8"]));
        check(&list(&["allow 2001:db8::/32"]), &["2001:db8::1", "2001:db8:ffff::1"], &["2001:db9::1", "1.2.3.4"]);
        check(&list(&["allow ::1"]), &["::1"], &["::2", "127.0.0.1"]);
    }

    /// The first example of chrony.conf(5): without `all`, the order does not matter.
    #[test]
    fn most_specific_rule_decides_in_any_order() {
        let rules = ["allow 1.2.3.4", "deny 1.2.3.0/24", "allow 1.2.0.0/16"];
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        for order in orders {
            let l = list(&order.map(|i| rules[i]));
            check(&l, &["1.2.3.4", "1.2.0.1", "1.2.255.255", "1.2.4.4"], &["1.2.3.3", "1.2.3.5", "1.3.0.0", "::1"]);
        }
    }

    /// The second example of chrony.conf(5): `allow all` overrides what came before inside
    /// its subnet, but not what comes after.
    #[test]
    fn all_resets_earlier_rules_inside_the_subnet() {
        let l = list(&["allow 1.2.3.4", "deny 1.2.3.0/24", "allow all 1.2.0.0/16"]);
        check(&l, &["1.2.3.4", "1.2.3.5", "1.2.0.1"], &["1.3.0.0"]);
        let l = list(&["allow all 1.2.0.0/16", "allow 1.2.3.4", "deny 1.2.3.0/24"]);
        check(&l, &["1.2.3.4", "1.2.0.1"], &["1.2.3.5", "1.3.0.0"]);
        // Rules outside the subnet survive.
        let l = list(&["deny 10.0.0.0/8", "allow 1.2.3.4", "deny all 1.2.0.0/16", "allow 0/0"]);
        check(&l, &["1.3.0.0", "9.9.9.9"], &["10.1.1.1", "1.2.3.4"]);
        // `deny all` with no subnet wipes everything before it, in both families.
        let l = list(&["allow 192.168.0.0/16", "allow 2001:db8::/32", "deny all", "allow 10.1"]);
        check(&l, &["10.1.2.3"], &["192.168.1.1", "2001:db8::1", "10.2.0.0"]);
        let l = list(&["allow 192.168.0.0/16", "allow 2001:db8::/32", "deny all"]);
        assert_eq!(l, AccessList::deny_all(), "nothing left to walk");
    }

    #[test]
    fn all_also_resets_partial_nibble_entries() {
        // A /26 marks entries of the table one level down; `deny all` of the enclosing
        // /24 must discard them as chrony's close_node does.
        let l = list(&["allow 1.2.3.64/26", "deny all 1.2.3.0/24"]);
        check(&l, &[], &["1.2.3.64", "1.2.3.100"]);
        // A /25 `all` resets a finer rule inside one of its entries.
        let l = list(&["deny 1.2.3.1", "allow all 1.2.3.0/25"]);
        check(&l, &["1.2.3.1", "1.2.3.127"], &["1.2.3.128"]);
    }

    #[test]
    fn later_rule_for_the_same_subnet_wins() {
        check(&list(&["allow 10.0.0.0/8", "deny 10.0.0.0/8"]), &[], &["10.1.1.1"]);
        check(&list(&["deny 10.0.0.0/8", "allow 10.0.0.0/8"]), &["10.1.1.1"], &[]);
        check(&list(&["allow 10.0.0.0/8", "deny 10.1.2.3", "allow 10.1.2.3"]), &["10.1.2.3"], &[]);
        check(&list(&["deny 2001:db8::1", "allow 2001:db8::1"]), &["2001:db8::1"], &["2001:db8::2"]);
    }

    /// chrony.conf(5): "1.2.3.0/28 and 1.2.3.0/29 are in different tables, but 1.2.3.0/25
    /// and 1.2.3.0/28 are in the same table" and there the order matters.
    #[test]
    fn prefixes_at_the_same_level_share_entries_as_in_chrony() {
        // Different levels (/28 at level 7, /29 at level 8): the more specific wins.
        for rules in [["allow 1.2.3.0/29", "deny 1.2.3.0/28"], ["deny 1.2.3.0/28", "allow 1.2.3.0/29"]] {
            check(&list(&rules), &["1.2.3.0", "1.2.3.7"], &["1.2.3.8", "1.2.3.15"]);
        }
        // Same level (/25 and /28 both at level 7): the later rule wins.
        check(&list(&["deny 1.2.3.0/25", "allow 1.2.3.0/28"]), &["1.2.3.0", "1.2.3.15"], &["1.2.3.16", "1.2.3.127"]);
        check(&list(&["allow 1.2.3.0/28", "deny 1.2.3.0/25"]), &[], &["1.2.3.0", "1.2.3.15", "1.2.3.16"]);
    }

    #[test]
    fn odd_prefix_lengths_cover_exactly_their_subnet() {
        for prefix_len in 0..=32u32 {
            let l = list(&[&format!("allow 10.20.30.40/{prefix_len}")]);
            let base = u32::from(Ipv4Addr::new(10, 20, 30, 40));
            let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - prefix_len) };
            let first = base & mask;
            let last = first | !mask;
            let inside = [first, last, base];
            let outside = [first.wrapping_sub(1), last.wrapping_add(1)];
            for a in inside {
                assert!(l.allows(IpAddr::V4(a.into())), "/{prefix_len}: {} inside", Ipv4Addr::from(a));
            }
            if prefix_len > 0 {
                for a in outside {
                    assert!(!l.allows(IpAddr::V4(a.into())), "/{prefix_len}: {} outside", Ipv4Addr::from(a));
                }
            }
        }
    }

    #[test]
    fn host_bits_of_a_rule_are_ignored() {
        assert_eq!(list(&["allow 1.2.3.200/25"]), list(&["allow 1.2.3.128/25"]));
        check(&list(&["allow 1.2.3.200/25"]), &["1.2.3.128", "1.2.3.255"], &["1.2.3.127", "1.2.4.0"]);
        assert_eq!(list(&["allow 2001:db8::ffff/32"]), list(&["allow 2001:db8::/32"]));
        assert_eq!(list(&["allow 10.9.8.7/0"]), list(&["allow 0/0"]));
    }

    #[test]
    fn mapped_addresses_are_checked_as_ipv4() {
        let l = list(&["allow 192.168.0.0/16", "deny 192.168.5"]);
        check(&l, &["::ffff:192.168.1.1", "192.168.1.1"], &["::ffff:192.168.5.1", "::ffff:10.0.0.1"]);
        // A rule written as a mapped subnet is the IPv4 rule it names.
        assert_eq!(list(&["allow ::ffff:10.0.0.0/104"]), list(&["allow 10.0.0.0/8"]));
        assert_eq!(list(&["allow ::ffff:1.2.3.4"]), list(&["allow 1.2.3.4"]));
        check(&list(&["allow ::ffff:10.0.0.0/104"]), &["10.1.1.1", "::ffff:10.1.1.1"], &["::1"]);
        // IPv4-compatible (::a.b.c.d) and NAT64 addresses are IPv6 addresses.
        check(&list(&["allow 1.2.3.4"]), &[], &["::1.2.3.4", "64:ff9b::1.2.3.4"]);
    }

    #[test]
    fn ipv6_rules_at_every_depth() {
        let l = list(&["allow 2001:db8::/32", "deny 2001:db8:1::/48", "allow 2001:db8:1::42", "deny 2001:db8::/127"]);
        check(
            &l,
            &["2001:db8::2", "2001:db8:2::1", "2001:db8:1::42", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["2001:db8::", "2001:db8::1", "2001:db8:1::41", "2001:db8:1::43", "2001:db9::"],
        );
        let l = list(&["allow ::/1"]);
        check(&l, &["::1", "7fff::"], &["8000::", "ffff::"]);
    }

    #[test]
    fn directives_are_case_insensitive_but_all_is_not() {
        check(&list(&["ALLOW 10", "Deny 10.1"]), &["10.0.0.1"], &["10.1.0.1"]);
        assert_eq!(error(&["allow ALL 10"]).kind, RuleErrorKind::TrailingWords);
        assert_eq!(list(&["allow \t 10.0.0.0/8  "]), list(&["allow 10"]));
    }

    #[test]
    fn errors_name_the_rule_and_the_word() {
        let cases: &[(&[&str], usize, usize, RuleErrorKind)] = &[
            (&["allow 10", ""], 1, 0, RuleErrorKind::Empty),
            (&["   "], 0, 0, RuleErrorKind::Empty),
            (&["permit 10"], 0, 0, RuleErrorKind::UnknownDirective("permit".into())),
            (&["allow 10.0.0.0/33"], 0, 6, RuleErrorKind::PrefixTooLong { prefix_len: 33, max: 32 }),
            (&["allow 10/33"], 0, 6, RuleErrorKind::PrefixTooLong { prefix_len: 33, max: 32 }),
            (&["allow ::/129"], 0, 6, RuleErrorKind::PrefixTooLong { prefix_len: 129, max: 128 }),
            (&["allow 10.0.0.0/"], 0, 6, RuleErrorKind::BadPrefixLength("".into())),
            (&["allow 10.0.0.0/-1"], 0, 6, RuleErrorKind::BadPrefixLength("-1".into())),
            (&["allow 10.0.0.0/+8"], 0, 6, RuleErrorKind::BadPrefixLength("+8".into())),
            (&["allow 10.0.0.0/8x"], 0, 6, RuleErrorKind::BadPrefixLength("8x".into())),
            (&["allow 10.0.0.0/00008"], 0, 6, RuleErrorKind::BadPrefixLength("00008".into())),
            (&["deny all 300.1"], 0, 9, RuleErrorKind::BadAddress("300.1".into())),
            (&["allow 1.2.3.4.5"], 0, 6, RuleErrorKind::BadAddress("1.2.3.4.5".into())),
            (&["allow 1..2"], 0, 6, RuleErrorKind::BadAddress("1..2".into())),
            (&["allow 1.2."], 0, 6, RuleErrorKind::BadAddress("1.2.".into())),
            (&["allow 2001:db8::g"], 0, 6, RuleErrorKind::BadAddress("2001:db8::g".into())),
            (&["allow ntp.example.org"], 0, 6, RuleErrorKind::HostName("ntp.example.org".into())),
            (&["allow 10.0.0.0/8 extra"], 0, 17, RuleErrorKind::TrailingWords),
            (&["allow all all"], 0, 10, RuleErrorKind::HostName("all".into())),
            (&["deny all 10 11"], 0, 12, RuleErrorKind::TrailingWords),
        ];
        for (rules, index, offset, kind) in cases {
            let e = error(rules);
            assert_eq!((e.index, e.offset, &e.kind), (*index, *offset, kind), "{rules:?}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            error(&["allow", "deny 1.2.3.4/40"]).to_string(),
            "access rule 1 (byte 5): prefix length 40 is longer than the address (32 bits)"
        );
    }

    #[test]
    fn only_the_range_starts_are_kept() {
        let mut rules = vec![];
        for i in 0..100 {
            rules.push(format!("allow 2001:db8:{i:x}::{i:x}"));
            rules.push(format!("deny 10.{i}.0.1"));
        }
        rules.push("deny all 2001:db8::/32".to_string());
        rules.push("allow all 10.0.0.0/8".to_string());
        let l = AccessList::parse(&rules).unwrap();
        assert_eq!(l.v4, Ranges { starts: vec![0, 0x0a00_0000, 0x0b00_0000], first_allowed: false });
        assert_eq!(l.v6, Ranges::uniform(0, false));
        check(&l, &["10.5.0.1"], &["2001:db8:5::5", "9.255.255.255", "11.0.0.0"]);
        assert_eq!(list(&["allow 10.1.2.3", "deny all 10.0.0.0/8", "deny all"]), AccessList::deny_all());
        // Rules that change nothing leave nothing behind.
        assert_eq!(list(&["deny 10", "deny 2001:db8::/32", "allow all", "allow 1.2.3.4"]), AccessList::allow_all());
        // A bare `allow` without `all` leaves the more specific denials in place.
        check(
            &list(&["deny 10", "deny 2001:db8::/32", "allow"]),
            &["11.0.0.0", "2001:db9::"],
            &["10.0.0.1", "2001:db8::1"],
        );
    }

    #[test]
    fn lists_at_the_edges_of_the_address_space() {
        let l = list(&[
            "allow 0.0.0.0",
            "allow 255.255.255.255",
            "allow ::",
            "allow ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        check(
            &l,
            &["0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["0.0.0.1", "255.255.255.254", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"],
        );
    }

    /// chrony's lookup, `check_ip_in_node`: walk down the tree, keep the last mark.
    fn walk(tree: &Tree, client: IpAddr) -> bool {
        let (root, address) = match Client::from(client) {
            Client::V4(a) => (ROOT_V4, u128::from(a) << 96),
            Client::V6(a) => (ROOT_V6, a),
        };
        let mut node = tree.nodes[root];
        let mut allowed = false;
        let mut depth = 0;
        loop {
            match node.mark {
                Mark::Allow => allowed = true,
                Mark::Deny => allowed = false,
                Mark::AsParent => {}
            }
            if node.children == NO_CHILDREN {
                return allowed;
            }
            node = tree.nodes[node.children as usize + nibble(address, depth)];
            depth += 1;
        }
    }

    /// Small deterministic generator for the differential test (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The semantics in plain words, for prefix lengths that are multiples of four
    /// (where chrony's tables give exactly these): a rule is void for an address if a
    /// later `all` rule no more specific than it also covers the address; of the rules
    /// left that cover it, the longest prefix decides, and among equals the latest.
    fn model(rules: &[Rule], client: IpAddr) -> bool {
        let (root, address) = match Client::from(client) {
            Client::V4(a) => (ROOT_V4, u128::from(a) << 96),
            Client::V6(a) => (ROOT_V6, a),
        };
        let covers = |r: &Rule| {
            let family_matches = match r.family {
                Family::Both => true,
                Family::V4 => root == ROOT_V4,
                Family::V6 => root == ROOT_V6,
            };
            let mask = if r.prefix_len == 0 { 0 } else { u128::MAX << (128 - r.prefix_len) };
            family_matches && (address & mask) == (r.address & mask)
        };
        let mut best: Option<(u32, bool)> = None;
        for (i, r) in rules.iter().enumerate() {
            if !covers(r)
                || rules[i + 1..].iter().any(|later| later.reset && later.prefix_len <= r.prefix_len && covers(later))
            {
                continue;
            }
            if best.is_none_or(|(len, _)| r.prefix_len >= len) {
                best = Some((r.prefix_len, r.allow));
            }
        }
        best.is_some_and(|(_, allow)| allow)
    }

    /// Random rules and clients drawn from a few nearby bases, so that subnets nest and
    /// overlap often. `prefix_step` 4 keeps prefix lengths on table levels, 1 does not.
    fn random_case(rng: &mut Rng, prefix_step: u64) -> (Vec<String>, Vec<IpAddr>) {
        let bases_v4 = [0x0a00_0000u32, 0x0a01_0200, 0xc0a8_0000, 0xc0a8_0540];
        let bases_v6 = [0x2001_0db8u128 << 96, (0x2001_0db8u128 << 96) | (0x42 << 64), 0xfe80u128 << 112];
        let mut rules = vec![];
        for _ in 0..1 + rng.below(12) {
            let verb = if rng.below(2) == 0 { "allow" } else { "deny" };
            let all = if rng.below(4) == 0 { " all" } else { "" };
            let rule = match rng.below(9) {
                0 => format!("{verb}{all}"),
                1..=4 => {
                    let base = bases_v4[rng.below(4) as usize] ^ (rng.next() as u32 & 0x0000_0f0f);
                    let prefix_len = prefix_step * rng.below(32 / prefix_step + 1);
                    format!("{verb}{all} {}/{prefix_len}", Ipv4Addr::from(base))
                }
                _ => {
                    let base = bases_v6[rng.below(3) as usize] ^ u128::from(rng.next() & 0x0f0f);
                    let prefix_len = prefix_step * rng.below(128 / prefix_step + 1);
                    format!("{verb}{all} {}/{prefix_len}", Ipv6Addr::from(base))
                }
            };
            rules.push(rule);
        }
        let clients = (0..200)
            .map(|_| {
                if rng.below(2) == 0 {
                    let a = bases_v4[rng.below(4) as usize] ^ (rng.next() as u32 & 0x0001_0f1f);
                    if rng.below(4) == 0 {
                        IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())
                    } else {
                        IpAddr::V4(a.into())
                    }
                } else {
                    IpAddr::V6((bases_v6[rng.below(3) as usize] ^ u128::from(rng.next() & 0x1f1f)).into())
                }
            })
            .collect();
        (rules, clients)
    }

    #[test]
    fn matches_the_plain_model_on_random_rules() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..300 {
            let (texts, clients) = random_case(&mut rng, 4);
            let l = AccessList::parse(&texts).unwrap();
            let rules: Vec<Rule> = texts.iter().map(|t| Rule::parse(t).unwrap()).collect();
            for client in clients {
                assert_eq!(l.allows(client), model(&rules, client), "round {round}: {client} with {texts:?}");
            }
        }
    }

    /// The flattened ranges answer as chrony's walk of the tree, at any prefix length.
    #[test]
    fn matches_chronys_walk_on_random_rules() {
        let mut rng = Rng(0x0dd_5eed_0002);
        for round in 0..300 {
            let (texts, clients) = random_case(&mut rng, 1);
            let l = AccessList::parse(&texts).unwrap();
            let mut tree = Tree::new();
            for text in &texts {
                tree.apply(&Rule::parse(text).unwrap());
            }
            for client in clients {
                assert_eq!(l.allows(client), walk(&tree, client), "round {round}: {client} with {texts:?}");
            }
        }
    }

    #[test]
    fn a_hundred_host_rules() {
        let mut rules = vec!["allow".to_string()];
        for i in 0..50 {
            rules.push(format!("deny 2001:db8::{i:x}"));
            rules.push(format!("deny 198.51.100.{i}"));
        }
        let l = AccessList::parse(&rules).unwrap();
        check(&l, &["2001:db8::ff", "198.51.100.200", "192.0.2.1"], &["2001:db8::31", "198.51.100.49", "2001:db8::"]);
        // Each denied host is one range in the middle of the allowed space.
        assert_eq!((l.v4.starts.len(), l.v6.starts.len()), (1 + 2, 1 + 2));
        // Every other host: each is a range of its own.
        let mut rules = vec!["allow".to_string()];
        for i in (0..200).step_by(2) {
            rules.push(format!("deny 2001:db8::{i:x}"));
        }
        let l = AccessList::parse(&rules).unwrap();
        assert_eq!(l.v6.starts.len(), 1 + 2 * 100);
        check(&l, &["2001:db8::1", "2001:db8::c7", "::1"], &["2001:db8::", "2001:db8::c6"]);
    }
}
