-- Golden output of the transpile pass `build_statements` (pass 3 of 3 in
-- recovery.transpile.passes.PASSES): the plan after it, per case of
-- tests/fixtures/transpile/golden_cases.toml. Regenerate and review the diff:
--   python -m pytest tests/test_transpile_golden.py --update-golden

-- ===== case: renamed column and a new-only column whose values are lost
-- lost value (bundle): quote[1].priority = 3
-- lost value (bundle): quote[21].priority = 1
-- table quote  key (id)
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   customer <- "b"."customer_name"  [rename-detected]  insert: "b"."customer_name"
--   total <- "b"."total"  [same-name]  insert: "b"."total"
--   not read by any old column (lost): priority
--   updatable: customer, total
INSERT INTO "quote" (
  "id",
  "customer",
  "total"
)
SELECT
  "b"."id" AS "id",
  "b"."customer_name" AS "customer",
  "b"."total" AS "total"
FROM "bundle"."quote" AS "b"
WHERE
  "b"."_recovery_kind" IN ('inserted', 'closure');
UPDATE "quote" SET "customer" = CASE
  WHEN (
    "u"."theirs_0" IS NOT "u"."base_0" AND "quote"."customer" IS "u"."base_0"
  )
  THEN "u"."theirs_0"
  ELSE "quote"."customer"
END, "total" = CASE
  WHEN (
    "u"."theirs_1" IS NOT "u"."base_1" AND "quote"."total" IS "u"."base_1"
  )
  THEN "u"."theirs_1"
  ELSE "quote"."total"
END
FROM (
  SELECT
    "o"."id" AS "key_0",
    "b"."customer_name" AS "theirs_0",
    "o"."customer" AS "base_0",
    "b"."total" AS "theirs_1",
    "o"."total" AS "base_1"
  FROM "bundle"."quote" AS "b"
  JOIN "base"."quote" AS "o"
    ON (
      "o"."id" IS "b"."id" AND "o"."_recovery_kind" = 'updated'
    )
  WHERE
    "b"."_recovery_kind" IN ('updated')
) AS "u"
WHERE
  "quote"."id" = "u"."key_0";

-- ===== case: mapping expression and a type change
-- table part  key (id)
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   price <- "b"."price_cents" / 100.0  [user-mapping]  insert: "b"."price_cents" / 100.0
--   qty <- "b"."qty"  [same-name]  insert: "b"."qty"
--   updatable: price, qty
INSERT INTO "part" (
  "id",
  "price",
  "qty"
)
SELECT
  "b"."id" AS "id",
  "b"."price_cents" / 100.0 AS "price",
  "b"."qty" AS "qty"
FROM "bundle"."part" AS "b"
WHERE
  "b"."_recovery_kind" IN ('inserted', 'closure');
UPDATE "part" SET "price" = CASE
  WHEN (
    "u"."theirs_0" IS NOT "u"."base_0" AND "part"."price" IS "u"."base_0"
  )
  THEN "u"."theirs_0"
  ELSE "part"."price"
END, "qty" = CASE
  WHEN (
    "u"."theirs_1" IS NOT "u"."base_1" AND "part"."qty" IS "u"."base_1"
  )
  THEN "u"."theirs_1"
  ELSE "part"."qty"
END
FROM (
  SELECT
    "o"."id" AS "key_0",
    "b"."price_cents" / 100.0 AS "theirs_0",
    "o"."price" AS "base_0",
    "b"."qty" AS "theirs_1",
    "o"."qty" AS "base_1"
  FROM "bundle"."part" AS "b"
  JOIN "base"."part" AS "o"
    ON (
      "o"."id" IS "b"."id" AND "o"."_recovery_kind" = 'updated'
    )
  WHERE
    "b"."_recovery_kind" IN ('updated')
) AS "u"
WHERE
  "part"."id" = "u"."key_0";

-- ===== case: old-only columns (dropped by the new release): default, NULL, and NOT NULL without a source
-- error: job.code is NOT NULL without a default and the new schema has no source for it: add it to the mapping file ([tables.job.columns] code = ...)
-- table job  key (id)
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   name <- "b"."name"  [same-name]  insert: "b"."name"
--   status <- —  [none]  insert: 'draft'
--   notes <- —  [none]  insert: NULL
--   code <- —  [none]  insert: NULL
--   updatable: name
INSERT INTO "job" (
  "id",
  "name",
  "status",
  "notes",
  "code"
)
SELECT
  "b"."id" AS "id",
  "b"."name" AS "name",
  'draft' AS "status",
  NULL AS "notes",
  NULL AS "code"
FROM "bundle"."job" AS "b"
WHERE
  "b"."_recovery_kind" IN ('inserted', 'closure');
UPDATE "job" SET "name" = CASE
  WHEN (
    "u"."theirs_0" IS NOT "u"."base_0" AND "job"."name" IS "u"."base_0"
  )
  THEN "u"."theirs_0"
  ELSE "job"."name"
END
FROM (
  SELECT
    "o"."id" AS "key_0",
    "b"."name" AS "theirs_0",
    "o"."name" AS "base_0"
  FROM "bundle"."job" AS "b"
  JOIN "base"."job" AS "o"
    ON (
      "o"."id" IS "b"."id" AND "o"."_recovery_kind" = 'updated'
    )
  WHERE
    "b"."_recovery_kind" IN ('updated')
) AS "u"
WHERE
  "job"."id" = "u"."key_0";

-- ===== case: renamed table, parent before child, a deletion-only table and a table skipped by the mapping
-- lost value (bundle): audit[1].what = 'boot'
-- lost value (bundle): audit[2].what = 'deploy'
-- table client  key (id)  reads new table customer
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   name <- "b"."name"  [same-name]  insert: "b"."name"
--   updatable: name
-- table tag  key (id)  (no rows to carry)
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   label <- "b"."label"  [same-name]  insert: "b"."label"
-- table invoice  key (id)
--   id <- "b"."id"  [same-name]  insert: "b"."id"
--   client_id <- "b"."client_id"  [same-name]  insert: "b"."client_id"
--   amount <- "b"."amount"  [same-name]  insert: "b"."amount"
--   updatable: client_id, amount
-- skipped by the mapping: audit
INSERT INTO "client" (
  "id",
  "name"
)
SELECT
  "b"."id" AS "id",
  "b"."name" AS "name"
FROM "bundle"."client" AS "b"
WHERE
  "b"."_recovery_kind" IN ('inserted', 'closure');
INSERT INTO "invoice" (
  "id",
  "client_id",
  "amount"
)
SELECT
  "b"."id" AS "id",
  "b"."client_id" AS "client_id",
  "b"."amount" AS "amount"
FROM "bundle"."invoice" AS "b"
WHERE
  "b"."_recovery_kind" IN ('inserted', 'closure');
UPDATE "client" SET "name" = CASE
  WHEN (
    "u"."theirs_0" IS NOT "u"."base_0" AND "client"."name" IS "u"."base_0"
  )
  THEN "u"."theirs_0"
  ELSE "client"."name"
END
FROM (
  SELECT
    "o"."id" AS "key_0",
    "b"."name" AS "theirs_0",
    "o"."name" AS "base_0"
  FROM "bundle"."client" AS "b"
  JOIN "base"."client" AS "o"
    ON (
      "o"."id" IS "b"."id" AND "o"."_recovery_kind" = 'updated'
    )
  WHERE
    "b"."_recovery_kind" IN ('updated')
) AS "u"
WHERE
  "client"."id" = "u"."key_0";
UPDATE "invoice" SET "client_id" = CASE
  WHEN (
    "u"."theirs_0" IS NOT "u"."base_0" AND "invoice"."client_id" IS "u"."base_0"
  )
  THEN "u"."theirs_0"
  ELSE "invoice"."client_id"
END, "amount" = CASE
  WHEN (
    "u"."theirs_1" IS NOT "u"."base_1" AND "invoice"."amount" IS "u"."base_1"
  )
  THEN "u"."theirs_1"
  ELSE "invoice"."amount"
END
FROM (
  SELECT
    "o"."id" AS "key_0",
    "b"."client_id" AS "theirs_0",
    "o"."client_id" AS "base_0",
    "b"."amount" AS "theirs_1",
    "o"."amount" AS "base_1"
  FROM "bundle"."invoice" AS "b"
  JOIN "base"."invoice" AS "o"
    ON (
      "o"."id" IS "b"."id" AND "o"."_recovery_kind" = 'updated'
    )
  WHERE
    "b"."_recovery_kind" IN ('updated')
) AS "u"
WHERE
  "invoice"."id" = "u"."key_0";
DELETE FROM "tag"
WHERE
  EXISTS(
    SELECT
      1
    FROM "base"."tag" AS "d"
    WHERE
      (
        "d"."_recovery_kind" = 'deleted' AND "d"."id" IS "tag"."id"
      )
  );
