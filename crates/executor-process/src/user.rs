//! The user a task runs as: a container spec's `user` (`name`, `uid`, `name:group`, `uid:gid`)
//! resolved against the contents of /etc/passwd and /etc/group, as moby/sys/user's
//! `GetExecUser` does: a name must exist, a number need not (its group is then 0 unless given).
//! Reading the files and switching user at spawn are the controller's business.

use crate::Error;

/// Numeric ids to run a task as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Where users and groups are looked up.
pub const PASSWD: &str = "/etc/passwd";
/// Where groups are looked up.
pub const GROUP: &str = "/etc/group";

/// Resolves `spec` (not empty) against `passwd` and `group` file contents.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<User, Error> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd_entries(passwd).find(|e| match user_part.parse::<u32>() {
        Ok(uid) => e.uid == uid,
        Err(_) => e.name == user_part,
    });
    let mut user = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => User {
            uid: e.uid,
            gid: e.gid,
        },
        (None, Ok(uid)) => User { uid, gid: 0 },
        (None, Err(_)) => return Err(Error::UnknownUser(user_part.to_string())),
    };
    if let Some(g) = group_part {
        user.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _)| *name == g)
                .map(|(_, gid)| gid)
                .ok_or_else(|| Error::UnknownGroup(g.to_string()))?,
        };
    }
    Ok(user)
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// `name:password:uid:gid:...` lines; malformed ones are skipped.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// `name:password:gid:members` lines as (name, gid); malformed ones are skipped.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32)> {
    group.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        Some((name, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_FILE: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment line is malformed and skipped
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1001:Alice:/home/alice:/bin/sh
";
    const GROUP_FILE: &str = "\
root:x:0:
staff:x:50:alice
alice:x:1001:
";

    fn check(spec: &str, expected: Result<(u32, u32), &str>) {
        let got = resolve_user(spec, PASSWD_FILE, GROUP_FILE)
            .map(|u| (u.uid, u.gid))
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "{spec:?}");
    }

    #[test]
    fn names_take_their_primary_group() {
        check("alice", Ok((1000, 1001)));
        check("root", Ok((0, 0)));
        check("daemon", Ok((1, 1)));
    }

    #[test]
    fn known_uids_take_their_primary_group() {
        check("1000", Ok((1000, 1001)));
    }

    #[test]
    fn unknown_uids_run_with_group_zero() {
        check("4242", Ok((4242, 0)));
    }

    #[test]
    fn groups_by_name_or_number() {
        check("alice:staff", Ok((1000, 50)));
        check("alice:7", Ok((1000, 7)));
        check("4242:4343", Ok((4242, 4343)));
    }

    #[test]
    fn unknown_names_are_errors() {
        check(
            "bob",
            Err("process executor: unable to find user bob: no matching entries in passwd file"),
        );
        check(
            "alice:wheel",
            Err("process executor: unable to find group wheel: no matching entries in group file"),
        );
    }
}
