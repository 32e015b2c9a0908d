-- index sqlite_autoindex__migrations_1 on _migrations
(automatic);

-- index sqlite_autoindex_devices_1 on devices
(automatic);

-- index sqlite_autoindex_model_files_1 on model_files
(automatic);

-- index sqlite_autoindex_models_1 on models
(automatic);

-- index sqlite_autoindex_pin_deliveries_1 on pin_deliveries
(automatic);

-- index sqlite_autoindex_pins_1 on pins
(automatic);

-- index sqlite_autoindex_privacy_campaigns_1 on privacy_campaigns
(automatic);

-- index sqlite_autoindex_privacy_exhausted_devices_1 on privacy_exhausted_devices
(automatic);

-- index sqlite_autoindex_privacy_rounds_1 on privacy_rounds
(automatic);

-- index sqlite_autoindex_release_keys_1 on release_keys
(automatic);

-- index sqlite_autoindex_releases_1 on releases
(automatic);

-- index sqlite_autoindex_rollout_devices_1 on rollout_devices
(automatic);

-- index sqlite_autoindex_rollouts_1 on rollouts
(automatic);

-- index sqlite_autoindex_round_members_1 on round_members
(automatic);

-- index sqlite_autoindex_uploads_1 on uploads
(automatic);

-- table _migrations on _migrations
CREATE TABLE _migrations (id integer primary key, name text unique not null, applied_at real);

-- table buffered_tasks on buffered_tasks
CREATE TABLE "buffered_tasks" (
   "round_id" INTEGER PRIMARY KEY,
   "device_id" TEXT,
   "base_version" INTEGER,
   "model_in" TEXT,
   "status" TEXT,
   "reason" TEXT,
   "staleness" INTEGER,
   "weight" REAL,
   "group_round" INTEGER,
   "started_at" REAL,
   "ended_at" REAL
);

-- table devices on devices
CREATE TABLE "devices" (
   "device_id" TEXT PRIMARY KEY,
   "identity_public" BLOB,
   "device_class" TEXT,
   "tags" TEXT DEFAULT '[]',
   "enrolled_at" REAL,
   "revoked" INTEGER DEFAULT 0,
   "last_seen" REAL,
   "epsilon_spent" REAL DEFAULT 0.0
, "certificate" BLOB, "quarantined_at" REAL, "quarantine_reason" TEXT);

-- table enrollment_authority on enrollment_authority
CREATE TABLE enrollment_authority (id integer primary key check (id = 1), private_key blob not null, created real not null);

-- table key_rotations on key_rotations
CREATE TABLE "key_rotations" (
   "sequence" INTEGER PRIMARY KEY,
   "new_key_id" TEXT,
   "message" BLOB,
   "created" REAL
);

-- table model_files on model_files
CREATE TABLE "model_files" (
   "architecture" TEXT PRIMARY KEY,
   "model" BLOB,
   "meta" BLOB,
   "model_sha256" TEXT,
   "meta_sha256" TEXT,
   "created" REAL
);

-- table models on models
CREATE TABLE "models" (
   "version" TEXT PRIMARY KEY,
   "parent" TEXT,
   "architecture" TEXT,
   "sha256" TEXT,
   "weights" BLOB,
   "num_params" INTEGER,
   "metrics" TEXT,
   "produced_by_round" INTEGER,
   "created_at" REAL
);

-- table pin_deliveries on pin_deliveries
CREATE TABLE "pin_deliveries" (
   "device_id" TEXT PRIMARY KEY,
   "version" TEXT,
   "sent_at" REAL,
   "result" TEXT,
   "reported_at" REAL
);

-- table pins on pins
CREATE TABLE "pins" (
   "selector" TEXT PRIMARY KEY,
   "version" TEXT,
   "created" REAL
);

-- table privacy_campaigns on privacy_campaigns
CREATE TABLE "privacy_campaigns" (
   "campaign_id" TEXT PRIMARY KEY,
   "budget_epsilon" REAL,
   "delta" REAL,
   "accountant" TEXT,
   "stopped" INTEGER DEFAULT 0
);

-- table privacy_exhausted_devices on privacy_exhausted_devices
CREATE TABLE "privacy_exhausted_devices" (
   "device_id" TEXT PRIMARY KEY,
   "marked_at" REAL
);

-- table privacy_rounds on privacy_rounds
CREATE TABLE "privacy_rounds" (
   "campaign_id" TEXT,
   "round_id" INTEGER,
   "event" TEXT,
   "epsilon" REAL,
   "recorded_at" REAL,
   PRIMARY KEY ("campaign_id", "round_id")
);

-- table rejections on rejections
CREATE TABLE "rejections" (
   "id" INTEGER PRIMARY KEY,
   "received_at" REAL,
   "topic" TEXT,
   "device_id" TEXT,
   "round_id" INTEGER,
   "kind" TEXT,
   "reason" TEXT,
   "size" INTEGER
);

-- table release_keys on release_keys
CREATE TABLE "release_keys" (
   "key_id" TEXT PRIMARY KEY,
   "public" BLOB,
   "private" BLOB,
   "created" REAL,
   "retired" REAL
);

-- table releases on releases
CREATE TABLE "releases" (
   "version" TEXT PRIMARY KEY,
   "parent" TEXT,
   "architecture" TEXT,
   "sha256" TEXT,
   "num_params" INTEGER,
   "metrics" TEXT,
   "produced_by" TEXT,
   "source" TEXT,
   "key_id" TEXT,
   "created" REAL,
   "signature" BLOB
, "model_sha256" TEXT, "model_meta_sha256" TEXT);

-- table rollout_devices on rollout_devices
CREATE TABLE "rollout_devices" (
   "rollout_id" TEXT REFERENCES "rollouts"("rollout_id"),
   "device_id" TEXT,
   "phase" INTEGER,
   "state" TEXT,
   "sent_at" REAL,
   "reported_at" REAL,
   "result" TEXT,
   "metric" REAL,
   "baseline" REAL,
   "detail" TEXT,
   "late" INTEGER,
   PRIMARY KEY ("rollout_id", "device_id")
);

-- table rollouts on rollouts
CREATE TABLE "rollouts" (
   "rollout_id" TEXT PRIMARY KEY,
   "version" TEXT,
   "target" TEXT,
   "phases" TEXT,
   "rate_per_minute" REAL,
   "max_failure_pct" REAL,
   "min_executed" INTEGER,
   "max_metric_drop" REAL,
   "min_evaluated" INTEGER,
   "phase_wait_s" REAL,
   "report_timeout_s" REAL,
   "status" TEXT,
   "phase" INTEGER,
   "phase_started" REAL,
   "created" REAL,
   "paused_at" REAL,
   "paused_total" REAL,
   "ended" REAL,
   "reason" TEXT
);

-- table round_members on round_members
CREATE TABLE "round_members" (
   "round_id" INTEGER REFERENCES "rounds"("round_id"),
   "device_id" TEXT,
   "selected_at" REAL,
   "last_stage" TEXT,
   "dropped_at" TEXT,
   PRIMARY KEY ("round_id", "device_id")
);

-- table rounds on rounds
CREATE TABLE "rounds" (
   "round_id" INTEGER PRIMARY KEY,
   "status" TEXT,
   "stage" TEXT,
   "reason" TEXT,
   "started_at" REAL,
   "ended_at" REAL,
   "goal" INTEGER,
   "selected" INTEGER,
   "participants" INTEGER,
   "dropped" TEXT,
   "model_in" TEXT,
   "model_out" TEXT,
   "accuracy" REAL,
   "loss" REAL,
   "epsilon" REAL,
   "delta" REAL,
   "plan" TEXT,
   "bytes_up" INTEGER,
   "bytes_down" INTEGER
, "clip_norm" REAL, "next_clip_norm" REAL, "epsilon_empirical" REAL, "epsilon_lower_bound" REAL);

-- table server_opt_state on server_opt_state
CREATE TABLE "server_opt_state" (
   "id" INTEGER PRIMARY KEY,
   "rule" TEXT,
   "state" TEXT,
   "round_id" INTEGER,
   "updated" REAL
);

-- table uploads on uploads
CREATE TABLE "uploads" (
   "round_id" INTEGER,
   "device_id" TEXT,
   "stage" TEXT,
   "received_at" REAL,
   "payload" BLOB, "status" TEXT NOT NULL DEFAULT 'accepted', "reason" TEXT,
   PRIMARY KEY ("round_id", "device_id", "stage")
);

