-- index examples_split on examples
CREATE INDEX examples_split on examples (split);

-- index sqlite_autoindex__migrations_1 on _migrations
(automatic);

-- index sqlite_autoindex_model_cache_1 on model_cache
(automatic);

-- index sqlite_autoindex_outbox_1 on outbox
(automatic);

-- index sqlite_autoindex_release_keys_1 on release_keys
(automatic);

-- index sqlite_autoindex_releases_1 on releases
(automatic);

-- index sqlite_autoindex_releases_2 on releases
(automatic);

-- index sqlite_autoindex_rollouts_taken_1 on rollouts_taken
(automatic);

-- index sqlite_autoindex_round_replies_1 on round_replies
(automatic);

-- table _migrations on _migrations
CREATE TABLE _migrations (id integer primary key, name text unique not null, applied_at real);

-- table examples on examples
CREATE TABLE "examples" (
   "id" INTEGER PRIMARY KEY,
   "split" TEXT NOT NULL,
   "label" INTEGER NOT NULL,
   "shape" TEXT NOT NULL,
   "features" BLOB NOT NULL,
   "source" TEXT
);

-- table identity on identity
CREATE TABLE identity (id integer primary key check (id = 1), device_id text not null, private_key blob not null, created real not null, authority_public blob);

-- table model_cache on model_cache
CREATE TABLE model_cache (version text primary key, sha256 text not null, weights blob not null, stored real not null);

-- table outbox on outbox
CREATE TABLE outbox ( id integer primary key autoincrement, round_id integer not null, stage text not null, topic text not null, payload blob not null, created real not null, attempts integer not null default 0, unique (round_id, stage));

-- table privacy_ledger on privacy_ledger
CREATE TABLE "privacy_ledger" (
   "round_id" INTEGER PRIMARY KEY,
   "mode" TEXT NOT NULL,
   "noise_multiplier" REAL NOT NULL,
   "clip_norm" REAL NOT NULL,
   "sampling_rate" REAL NOT NULL,
   "delta" REAL NOT NULL,
   "rdp_offset" REAL NOT NULL,
   "recorded_at" REAL
);

-- table release_keys on release_keys
CREATE TABLE release_keys (key_id text primary key, public blob not null, added real not null);

-- table release_state on release_state
CREATE TABLE release_state (id integer primary key check (id = 1), rotation_seq integer not null, pinned text not null);

-- table releases on releases
CREATE TABLE releases (version text primary key, slot text not null unique, release blob not null, installed real not null);

-- table rollouts_taken on rollouts_taken
CREATE TABLE rollouts_taken (rollout_id text primary key, version text not null, result text not null, at real not null);

-- table round_replies on round_replies
CREATE TABLE round_replies (round_id integer not null, request text not null, digest blob not null, replies blob not null, primary key (round_id, request));

-- table round_state on round_state
CREATE TABLE round_state (round_id integer primary key, stage text not null, status text not null, updated real not null);

-- table sqlite_sequence on sqlite_sequence
CREATE TABLE sqlite_sequence(name,seq);

