//! Broadcast groups: named sets of connections with roles, across the fleet
//! (the seeds' `createGroup`: `maxMembers`, `meta`, roles, `close`).
//!
//! [`create`] a group wherever it is needed (only the first call in the
//! fleet creates it; later ones get it unchanged), then [`join`] the
//! calling connection from a hook serving it (an RPC or the subscribe
//! gate). The join takes effect at once — also if the hook fails
//! afterwards — and is atomic against the group's `max_members` across
//! every host. A member receives the group's events on `__group:{name}`:
//! `members` (to the joiner: a `{"role"}` per live member), `join` /
//! `leave` `{"role","count"}`, `close` (null), and what the plugin
//! [`publish`]es, to every member or only to one [`Role`]. A connection
//! leaves when it calls [`leave`], when it closes, or when its host stops
//! refreshing it (a crashed host's members expire after 120 s).
//!
//! Joining fails with [`Error::QuotaExceeded`] when the group is full,
//! [`Error::AccessDenied`] when it is [`close`]d and [`Error::Invalid`]
//! when it does not exist.
//!
//! ```no_run
//! use tenantry_sdk::{Ctx, LiveError, groups, serde_json::json};
//!
//! /// `game/join` with args `[table]`: sit at a table of at most 4.
//! fn join_table(_ctx: &Ctx, (table,): (String,)) -> Result<u64, LiveError> {
//!     let name = format!("table:{table}");
//!     groups::create(&name, Some(4), &json!({"game": "bridge"}))?;
//!     let joined = groups::join(&name, groups::Role::Member).map_err(|e| match e {
//!         tenantry_sdk::Error::QuotaExceeded => LiveError::new("TABLE_FULL", "the table is full"),
//!         e => e.into(),
//!     })?;
//!     groups::publish(&name, "seated", &json!({"count": joined.count}), Some(groups::Role::Admin))?;
//!     Ok(joined.count)
//! }
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::host;

/// A member's role (the seeds' roles).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary member (the default).
    #[default]
    Member,
    /// An administrator.
    Admin,
    /// A read-only member.
    Viewer,
}

impl Role {
    /// The seeds' name of the role: `member`, `admin` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as stored (from [`create`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// This call created the group (else it existed and the arguments were
    /// ignored).
    pub created: bool,
    /// The most live members the group holds; `None` for no limit of its
    /// own (the host's per-group bound still applies).
    pub max_members: Option<u32>,
    /// The group's metadata.
    pub meta: serde_json::Value,
    /// The group is closed: every join is refused.
    pub closed: bool,
}

impl GroupInfo {
    /// The metadata decoded as `T`.
    pub fn meta_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.meta.clone()).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// The outcome of [`join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The connection was not a member before (a `join` event was
    /// announced).
    pub new: bool,
    /// Its role: the one asked for, or for a connection already a member,
    /// the role it has.
    pub role: Role,
    /// Live members after the join.
    pub count: u64,
}

/// One live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its connection id ([`crate::Ctx::connection_id`] of its calls).
    pub connection_id: String,
    /// Its role.
    pub role: Role,
}

/// Create group `name` (printable ASCII without `"` or `\`, 1-200 bytes)
/// holding at most `max_members` live members (`None`: no limit of its
/// own) with metadata `meta`, or return the existing group unchanged.
pub fn create<T: Serialize + ?Sized>(
    name: &str,
    max_members: Option<u32>,
    meta: &T,
) -> Result<GroupInfo, Error> {
    let json = serde_json::to_string(meta).map_err(|e| Error::Encode(e.to_string()))?;
    host::groups_create(name, max_members, &json)
}

/// Make the calling connection a member of `name` with `role`, at once
/// (also if the hook later fails). [`Error::QuotaExceeded`] when the group
/// is full, [`Error::AccessDenied`] when it is closed, [`Error::Invalid`]
/// when it does not exist. Joining again keeps the first role
/// (`new == false`). Only from hooks serving a connection.
pub fn join(name: &str, role: Role) -> Result<Joined, Error> {
    host::groups_join(name, role)
}

/// Make the calling connection leave `name`; `false` if it was not a
/// member.
pub fn leave(name: &str) -> Result<bool, Error> {
    host::groups_leave(name)
}

/// Send `event` with `data` to the members of `name` on every host; with
/// `role`, only to the members with that role. The event names `join`,
/// `leave`, `members` and `close` are the host's ([`Error::Invalid`]).
/// Counts against the publish rate like [`crate::publish`].
pub fn publish<T: Serialize + ?Sized>(
    name: &str,
    event: &str,
    data: &T,
    role: Option<Role>,
) -> Result<(), Error> {
    let json = serde_json::to_string(data).map_err(|e| Error::Encode(e.to_string()))?;
    host::groups_publish(name, event, &json, role)
}

/// The live members of `name`, sorted by connection id (empty for an
/// unknown or closed group).
pub fn members(name: &str) -> Result<Vec<GroupMember>, Error> {
    host::groups_members(name)
}

/// How many live members `name` has (0 for an unknown group).
pub fn count(name: &str) -> Result<u64, Error> {
    host::groups_count(name)
}

/// The metadata of `name`; `None` if there is no such group.
pub fn meta(name: &str) -> Result<Option<serde_json::Value>, Error> {
    host::groups_get_meta(name)
}

/// Replace the metadata of `name` ([`Error::Invalid`] if there is no such
/// group).
pub fn set_meta<T: Serialize + ?Sized>(name: &str, meta: &T) -> Result<(), Error> {
    let json = serde_json::to_string(meta).map_err(|e| Error::Encode(e.to_string()))?;
    host::groups_set_meta(name, &json)
}

/// Dissolve `name`: every member (on every host) gets `close` and is
/// removed, and later joins are refused ([`Error::AccessDenied`]). Returns
/// how many members it had; closing a closed group returns 0.
/// [`Error::Invalid`] if there is no such group.
pub fn close(name: &str) -> Result<u32, Error> {
    host::groups_close(name)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::{self, GroupPublished};
    use serde_json::json;

    #[test]
    fn roles_have_the_seeds_names() {
        for (role, name) in [
            (Role::Member, "member"),
            (Role::Admin, "admin"),
            (Role::Viewer, "viewer"),
        ] {
            assert_eq!(role.as_str(), name);
            assert_eq!(role.to_string(), name);
            assert_eq!(serde_json::to_value(role).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<Role>(json!(name)).unwrap(), role);
        }
        assert_eq!(Role::default(), Role::Member);
        assert!(serde_json::from_value::<Role>(json!("Admin")).is_err());
    }

    #[test]
    fn create_returns_the_first_definition() {
        testing::reset();
        let info = create("lobby", Some(2), &json!({"topic": "chess"})).unwrap();
        assert_eq!(
            info,
            GroupInfo {
                created: true,
                max_members: Some(2),
                meta: json!({"topic": "chess"}),
                closed: false,
            }
        );
        #[derive(Deserialize, PartialEq, Debug)]
        struct Meta {
            topic: String,
        }
        assert_eq!(
            info.meta_as::<Meta>().unwrap(),
            Meta {
                topic: "chess".into()
            }
        );
        assert!(matches!(info.meta_as::<u32>(), Err(Error::Decode(_))));
        let again = create("lobby", None, &json!(null)).unwrap();
        assert!(!again.created);
        assert_eq!(again.max_members, Some(2));
        assert_eq!(again.meta, json!({"topic": "chess"}));
        let open = create("open", None, &()).unwrap();
        assert_eq!((open.max_members, open.meta), (None, json!(null)));
        assert_eq!(create("zero", Some(0), &1), Err(Error::Invalid));
        let big = "x".repeat(16 * 1024);
        assert_eq!(create("big", None, &big), Err(Error::TooLarge));
    }

    #[test]
    fn names_are_checked_like_topics() {
        testing::reset();
        assert!(create(&"g".repeat(200), None, &1).is_ok());
        assert_eq!(create(&"g".repeat(201), None, &1), Err(Error::TooLarge));
        for bad in ["", "a\"b", "a\\b", "tab\there", "caf\u{e9}", "del\x7f"] {
            assert_eq!(create(bad, None, &1), Err(Error::Invalid), "{bad:?}");
            assert_eq!(join(bad, Role::Member), Err(Error::Invalid), "{bad:?}");
            assert_eq!(count(bad), Err(Error::Invalid), "{bad:?}");
        }
        assert!(create("__private spaces: ok!", None, &1).is_ok());
    }

    #[test]
    fn join_is_refused_for_unknown_closed_and_full_groups() {
        testing::reset();
        assert_eq!(join("nope", Role::Member), Err(Error::Invalid));
        create("pair", Some(2), &json!({})).unwrap();
        let other = testing::join_group_as("pair", "conn-b", Role::Admin).unwrap();
        assert_eq!((other.new, other.count), (true, 1));
        assert_eq!(
            join("pair", Role::Viewer).unwrap(),
            Joined {
                new: true,
                role: Role::Viewer,
                count: 2
            }
        );
        // A rejoin is idempotent and keeps the first role.
        assert_eq!(
            join("pair", Role::Admin).unwrap(),
            Joined {
                new: false,
                role: Role::Viewer,
                count: 2
            }
        );
        assert_eq!(
            testing::join_group_as("pair", "conn-c", Role::Member),
            Err(Error::QuotaExceeded)
        );
        assert_eq!(
            members("pair").unwrap(),
            [
                GroupMember {
                    connection_id: "conn-b".into(),
                    role: Role::Admin
                },
                GroupMember {
                    connection_id: "test-connection".into(),
                    role: Role::Viewer
                },
            ]
        );
        assert_eq!(close("pair"), Ok(2));
        assert_eq!(join("pair", Role::Member), Err(Error::AccessDenied));
    }

    #[test]
    fn leave_count_and_members() {
        testing::reset();
        assert!(!leave("nope").unwrap());
        assert_eq!(count("nope"), Ok(0));
        assert_eq!(members("nope"), Ok(Vec::new()));
        create("room", None, &1).unwrap();
        join("room", Role::Member).unwrap();
        assert_eq!(count("room"), Ok(1));
        assert!(leave("room").unwrap());
        assert!(!leave("room").unwrap());
        assert_eq!(count("room"), Ok(0));
        // Joining after leaving is new again, with the new role.
        let j = join("room", Role::Admin).unwrap();
        assert_eq!((j.new, j.role, j.count), (true, Role::Admin, 1));
    }

    #[test]
    fn a_connection_is_in_at_most_64_groups() {
        testing::reset();
        for i in 0..65 {
            create(&format!("g{i}"), None, &1).unwrap();
        }
        for i in 0..64 {
            join(&format!("g{i}"), Role::Member).unwrap();
        }
        assert_eq!(join("g64", Role::Member), Err(Error::QuotaExceeded));
        assert!(
            !join("g0", Role::Member).unwrap().new,
            "a rejoin still works"
        );
        leave("g0").unwrap();
        assert!(join("g64", Role::Member).unwrap().new);
    }

    #[test]
    fn publish_is_recorded_and_checked() {
        testing::reset();
        create("room", None, &1).unwrap();
        publish("room", "chat", &json!({"text": "hi"}), None).unwrap();
        publish("room", "secret", "psst", Some(Role::Admin)).unwrap();
        assert_eq!(
            testing::take_group_published(),
            [
                GroupPublished {
                    group: "room".into(),
                    event: "chat".into(),
                    data: json!({"text": "hi"}),
                    role: None,
                },
                GroupPublished {
                    group: "room".into(),
                    event: "secret".into(),
                    data: json!("psst"),
                    role: Some(Role::Admin),
                },
            ]
        );
        assert_eq!(testing::take_group_published(), []);
        for reserved in ["join", "leave", "members", "close"] {
            assert_eq!(publish("room", reserved, &1, None), Err(Error::Invalid));
        }
        for bad_event in ["", "a\"b", "line\nbreak"] {
            assert_eq!(publish("room", bad_event, &1, None), Err(Error::Invalid));
        }
        assert_eq!(publish("a\"b", "chat", &1, None), Err(Error::Invalid));
        let huge = "x".repeat(1 << 20);
        assert_eq!(publish("room", "chat", &huge, None), Err(Error::TooLarge));
        assert_eq!(testing::take_group_published(), []);
        assert_eq!(testing::take_published(), [], "not a topic publish");
    }

    #[test]
    fn meta_and_close() {
        testing::reset();
        assert_eq!(meta("nope"), Ok(None));
        assert_eq!(set_meta("nope", &1), Err(Error::Invalid));
        assert_eq!(close("nope"), Err(Error::Invalid));
        create("room", None, &json!({"v": 1})).unwrap();
        assert_eq!(meta("room"), Ok(Some(json!({"v": 1}))));
        set_meta("room", &json!({"v": 2})).unwrap();
        assert_eq!(meta("room"), Ok(Some(json!({"v": 2}))));
        assert_eq!(
            set_meta("room", &"x".repeat(16 * 1024)),
            Err(Error::TooLarge)
        );
        join("room", Role::Member).unwrap();
        assert_eq!(close("room"), Ok(1));
        assert_eq!(close("room"), Ok(0), "closing again");
        assert_eq!(count("room"), Ok(0));
        assert_eq!(members("room"), Ok(Vec::new()));
        assert!(!leave("room").unwrap());
        // A closed group keeps its meta, and `create` returns it closed.
        assert_eq!(meta("room"), Ok(Some(json!({"v": 2}))));
        let info = create("room", Some(3), &0).unwrap();
        assert!(!info.created && info.closed);
        assert_eq!(join("room", Role::Member), Err(Error::AccessDenied));
    }

    #[test]
    fn reset_forgets_groups() {
        testing::reset();
        create("room", None, &1).unwrap();
        publish("room", "e", &1, None).unwrap();
        testing::reset();
        assert_eq!(meta("room"), Ok(None));
        assert_eq!(testing::take_group_published(), []);
    }
}
