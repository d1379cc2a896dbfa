//! The repository test suite, written once (`suite`) and run against both engines: SQLite in a
//! temporary file, PostgreSQL in a fresh database per test on the server named by
//! `RAMPART_TEST_DATABASE_URL` (skipped loudly when unset, failing when `CI` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod batches;
mod cache_policy;
mod harness;
mod limits;
mod suite;
mod usage;
mod webhooks;

/// Instantiate every named `suite` function once per engine: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::harness::TestDb::sqlite().await;
                    crate::suite::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::harness::TestDb::postgres().await else {
                        return;
                    };
                    crate::suite::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

on_both_engines!(
    migrating_twice_applies_nothing_the_second_time,
    creates_a_team_and_reads_it_back,
    a_duplicate_team_name_is_a_conflict,
    renames_and_disables_a_team,
    a_missing_team_is_not_found,
    user_emails_are_unique_ignoring_case,
    a_user_in_a_missing_team_is_invalid,
    an_unknown_role_is_refused_by_the_schema,
    updates_only_the_user_fields_given,
    disables_a_user_and_lists_users_by_team,
    creates_a_key_and_finds_it_by_hash,
    a_duplicate_key_hash_is_a_conflict,
    lists_keys_by_team_and_by_user,
    updates_key_scopes_and_clears_the_expiry,
    a_disabled_key_is_unusable_until_enabled_again,
    revoking_twice_keeps_the_first_revocation_time,
    rotation_makes_a_successor_and_expires_the_old_key_after_the_overlap,
    a_revoked_key_cannot_be_rotated,
    touching_last_used_applies_a_batch_and_never_goes_backwards,
    stores_lists_and_deletes_upstream_credentials,
    reencrypting_credentials_is_all_or_nothing,
    spends_a_refresh_token_once_then_reports_the_replay,
    a_new_password_or_disabling_voids_the_users_sessions,
    revoking_a_family_stops_every_token_in_it,
    an_expired_or_unknown_refresh_token_is_not_spent,
    concurrent_spends_of_one_refresh_token_succeed_exactly_once,
    lists_unexpired_revoked_jtis_and_purges_expired_ones,
    appended_audit_events_form_a_verifiable_chain,
    lists_audit_events_by_filter_one_page_at_a_time,
    concurrent_audit_appends_leave_one_unforked_chain,
    verification_finds_an_edited_audit_row,
    verification_finds_a_deleted_audit_row,
    an_audited_write_commits_its_event_with_it,
    a_failed_write_leaves_no_audit_event,
    timestamps_round_trip_at_microsecond_precision,
    key_limits_are_created_with_the_key_and_replaced_whole,
    team_limits_and_key_defaults_round_trip,
    bad_limits_and_missing_owners_are_refused_without_writing,
    a_rotated_key_keeps_its_limits,
    the_directory_version_moves_with_key_team_and_limit_writes_only,
    cache_policies_round_trip_per_key_and_team_and_move_the_directory,
    a_bad_cache_policy_or_a_missing_owner_writes_nothing,
    inserting_usage_twice_counts_it_once,
    inserting_new_usage_never_counts_a_stored_record_twice,
    usage_groups_by_key_team_model_and_day_from_the_rollups,
    usage_filters_by_user,
    a_large_batch_is_inserted_in_one_call,
    purging_deletes_old_raw_records_and_keeps_the_rollups,
    an_empty_or_inverted_usage_range_is_invalid,
    odd_values_are_stored_as_they_can_be_and_rollups_saturate,
    batches_are_listed_per_owner_newest_first_with_cursors,
    claims_keep_each_team_within_its_limit_and_share_slots_fairly,
    a_completion_writes_its_usage_once_and_the_last_one_ends_the_batch,
    a_lapsed_lease_is_reclaimed_as_maybe_duplicate_and_charged_once,
    claims_skip_the_batches_asked,
    a_deferred_item_keeps_its_attempts_and_its_last_error,
    retries_end_in_a_dead_letter_that_can_be_replayed,
    cancel_stops_unstarted_items_and_expiry_ends_the_rest,
    an_upstream_batch_ends_with_its_usage_in_one_transaction,
    an_upstream_batch_keeps_its_items_models_until_it_ends,
    a_batch_is_stored_with_all_its_items_models_or_not_at_all,
    team_webhooks_round_trip_and_keep_their_secret,
    an_ended_batch_is_due_until_delivered_and_each_attempt_is_claimed_once,
    retries_stop_at_max_attempts_and_disabled_or_later_webhooks_send_nothing,
);
