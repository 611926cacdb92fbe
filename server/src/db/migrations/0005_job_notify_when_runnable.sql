-- The job_notify trigger of 0003 fired FOR EACH STATEMENT, so every claim (an UPDATE that
-- matches no row when there is no work) notified every node, whose workers woke and claimed
-- again: an idle server kept Postgres and Node busy with a storm of empty claims (found by
-- npm run bench). Workers need waking only when a job becomes runnable: inserted, retried or
-- replayed as 'pending'. Identical notifications within one transaction are delivered once, so a
-- batch of new jobs still wakes the workers once.
DROP TRIGGER job_notify ON job;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE OF status, run_at ON job
  FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION job_notify();
