/* api: the controller's own HTTP API (docs/api.md "Controller"): health, tokens, tenants, users,
 * grants, regions, global quotas, cluster and /metrics. Fan-out routes are in fanout.c. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/log.h"
#include "ap/token.h"
#include "catalog.h"
#include "regionlink.h"
#include "split.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/** Longest lifetime a token may ask for (7 days). */
#define MAX_TOKEN_TTL_S (7 * 24 * 3600)

static const struct ap_claims *authed(struct ctl_node *n, struct ap_http_req *req)
{
    return ap_authn_request(n->authn, req);
}

static bool operator_only(struct ctl_node *n, struct ap_http_req *req)
{
    const struct ap_claims *c = authed(n, req);
    return c != NULL && ap_authn_allow(req, c, AP_ACT_OPERATE, NULL, NULL, NULL);
}

static bool cluster_guard(struct ap_http_req *req, bool write, void *data)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = authed(n, req);
    if (c == NULL) {
        return false;
    }
    return !write || ap_authn_allow(req, c, AP_ACT_OPERATE, NULL, NULL, NULL);
}

/* A path parameter that must be a DNS label, or NULL after answering 404. */
static const char *name_param(struct ap_http_req *req, const char *param, const char *what)
{
    const char *v = ap_http_req_param(req, param);
    if (!ap_token_name_valid(v)) {
        char msg[160];
        snprintf(msg, sizeof msg, "no %s is named '%.64s' (names are DNS labels)", what,
                 v != NULL ? v : "");
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return NULL;
    }
    return v;
}

static void h_health(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    uint8_t pk[AP_TOKEN_PK_SIZE];
    json_t *body = json_pack(
        "{s:s, s:I, s:s, s:o, s:I, s:I, s:I, s:b}", "tier", "controller", "node",
        (json_int_t)n->cfg.id, "role", ap_rsm_role_name(ap_rsm_role(n->rsm)), "leader",
        ap_rsm_http_leader_json(n->rh), "applied_index", (json_int_t)ap_rsm_applied_index(n->rsm),
        "commit_index", (json_int_t)ap_rsm_commit_index(n->rsm), "term",
        (json_int_t)ap_rsm_term(n->rsm), "signing_key",
        ccat_key(ap_rsm_store(n->rsm), pk, NULL) == 0);
    ap_http_reply_json(req, 200, body);
}

static void h_metrics(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_http_reply_metrics(req, n->metrics);
}

/* ---- tokens: the password check (Argon2id) runs on libuv's threadpool ---- */

struct token_work {
    uv_work_t work;
    struct ctl_node *n;
    struct ap_http_req *req;
    char user[AP_NAME_MAX];
    char password[AP_PASSWORD_MAX_LEN + 1];
    char hash[AP_PASSWORD_HASH_SIZE];
    int64_t ttl;
    int verdict;
};

static void token_check(uv_work_t *w)
{
    struct token_work *t = w->data;
    t->verdict = ap_password_verify(t->hash, t->password);
    sodium_memzero(t->password, sizeof t->password);
}

static void format_time(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Sign a token for the user the worker checked; every path frees t. */
static void token_issue(uv_work_t *w, int status)
{
    struct token_work *t = w->data;
    struct ctl_node *n = t->n;
    struct ap_http_req *req = t->req;
    char errmsg[AP_ERRMSG_SIZE], hash[AP_PASSWORD_HASH_SIZE];
    char token[AP_TOKEN_MAX_LEN], exp[32];
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    json_t *grants = NULL;
    struct ap_store *st = ap_rsm_store(n->rsm);
    struct ap_claims *cl = NULL; /* About 40 KiB: not on the stack. */
    if (status != 0 || t->verdict != 0) {
        ap_http_reply_error(req, 401, "unauthenticated", "invalid user or password", NULL);
        goto out;
    }
    cl = ap_calloc(1, sizeof *cl);
    if (cl == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        goto out;
    }
    /* Read the user again: it may have changed while the hash was checked. */
    if (ccat_user_auth(st, t->user, hash, sizeof hash, cl->tenant, sizeof cl->tenant, &cl->gen,
                       &grants) != 0 ||
        strcmp(hash, t->hash) != 0) {
        ap_http_reply_error(req, 401, "unauthenticated", "invalid user or password", NULL);
        goto out;
    }
    if (ccat_key(st, pk, sk) != 0) {
        ap_http_reply_error(req, 503, "unavailable", "the signing key is not created yet; retry",
                            NULL);
        goto out;
    }
    ap_strlcpy(cl->user, t->user, sizeof cl->user);
    cl->iat = (int64_t)time(NULL);
    cl->exp = cl->iat + t->ttl;
    size_t i;
    json_t *g;
    json_array_foreach(grants, i, g)
    {
        json_object_del(g, "id");
        if (cl->n_grants < AP_CLAIMS_MAX_GRANTS &&
            ap_grant_from_json(g, &cl->grants[cl->n_grants], errmsg) == 0) {
            cl->n_grants++;
        }
    }
    int rv = ap_token_sign(cl, sk, token, sizeof token);
    sodium_memzero(sk, sizeof sk);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not sign the token (too many grants?)");
        goto out;
    }
    format_time(cl->exp, exp, sizeof exp);
    ap_metric_inc(n->m_tokens);
    AP_LOG(AP_LOG_INFO, "token_issued user=%s grants=%zu expires_at=%s", cl->user, cl->n_grants,
           exp);
    ap_http_reply_json(req, 201,
                       json_pack("{s:s, s:s, s:s, s:s, s:I}", "token", token, "expires_at", exp,
                                 "user", cl->user, "tenant", cl->tenant, "gen",
                                 (json_int_t)cl->gen));
out:
    json_decref(grants);
    ap_free(cl);
    ap_free(t);
}

static void h_token_create(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    static const char *const allowed[] = {"user", "password", "ttl_seconds", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    json_t *body = ap_http_req_json(req);
    const char *user = NULL, *password = NULL;
    int64_t ttl = n->cfg.token_ttl_s != 0 ? n->cfg.token_ttl_s : AP_TOKEN_DEFAULT_TTL;
    int rv;
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body {\"user\",\"password\"} is required");
        return;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "user", true, AP_NAME_MAX - 1, &user, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "password", true, AP_PASSWORD_MAX_LEN, &password,
                                   errmsg)) != 0 ||
        (rv = ap_http_json_get_int(body, "ttl_seconds", false, 1, MAX_TOKEN_TTL_S, &ttl,
                                   errmsg)) != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    struct token_work *t = ap_calloc(1, sizeof *t);
    if (t == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    char tenant[AP_NAME_MAX];
    uint64_t gen;
    json_t *grants = NULL;
    if (ccat_user_auth(ap_rsm_store(n->rsm), user, t->hash, sizeof t->hash, tenant,
                       sizeof tenant, &gen, &grants) != 0) {
        /* Same answer as a wrong password: names are not disclosed. */
        ap_free(t);
        ap_http_reply_error(req, 401, "unauthenticated", "invalid user or password", NULL);
        return;
    }
    json_decref(grants);
    t->n = n;
    t->req = req;
    t->ttl = ttl;
    ap_strlcpy(t->user, user, sizeof t->user);
    ap_strlcpy(t->password, password, sizeof t->password);
    t->work.data = t;
    rv = uv_queue_work(n->loop, &t->work, token_check, token_issue);
    if (rv != 0) {
        sodium_memzero(t->password, sizeof t->password);
        ap_free(t);
        ap_http_reply_err(req, AP_EINTERNAL, "could not schedule the password check");
    }
}

/* ---- tenants and global quotas ---- */

static int quota_from_json(json_t *q, struct ccat_amounts *out, char *errmsg)
{
    static const char *const allowed[] = {"instances", "cpu_millis", "memory_mb", NULL};
    for (int i = 0; i < CCAT_RES_N; i++) {
        out->v[i] = -1;
    }
    if (q == NULL) {
        return 0;
    }
    int rv = ap_http_json_check_fields(q, allowed, errmsg);
    for (int i = 0; rv == 0 && i < CCAT_RES_N; i++) {
        rv = ap_http_json_get_int(q, ccat_res_names[i], false, 0, INT64_C(1) << 40, &out->v[i],
                                  errmsg);
    }
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "quota");
    }
    return rv;
}

/* Propose tenant.put with the quota split over the regions known now (split.h). */
static void tenant_put(struct ctl_node *n, struct ap_http_req *req, const char *name, bool create,
                       const struct ccat_amounts *quota, unsigned ok_status)
{
    uint8_t *cmd;
    size_t len;
    int rv = split__encode_tenant(ap_rsm_store(n->rsm), name, create, quota, &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, ok_status, NULL, NULL);
}

static void h_tenant_create(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    static const char *const allowed[] = {"name", "quota", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    json_t *body = ap_http_req_json(req), *q = NULL;
    const char *name = NULL;
    struct ccat_amounts quota;
    int rv;
    if (!operator_only(n, req)) {
        return;
    }
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body {\"name\",\"quota\"} is required");
        return;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "name", true, AP_NAME_MAX - 1, &name, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "quota", false, &q, errmsg)) != 0 ||
        (rv = quota_from_json(q, &quota, errmsg)) != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!ap_token_name_valid(name)) {
        ap_http_reply_err(req, AP_EINVAL,
                          "field 'name': tenant names are DNS labels (1-63 lowercase letters, "
                          "digits or '-')");
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req); /* The leader splits the quota. */
        return;
    }
    tenant_put(n, req, name, true, &quota, 201);
}

static void h_quota_set(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    char errmsg[AP_ERRMSG_SIZE];
    struct ccat_amounts quota;
    if (!operator_only(n, req)) {
        return;
    }
    const char *name = name_param(req, "tenant", "tenant");
    if (name == NULL) {
        return;
    }
    json_t *body = ap_http_req_json(req);
    int rv = quota_from_json(body != NULL ? body : NULL, &quota, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req);
        return;
    }
    tenant_put(n, req, name, false, &quota, 200);
}

static void read_tenants(void *data, struct ap_http_req *req)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = authed(n, req);
    if (c == NULL) {
        return;
    }
    json_t *arr;
    int rv = ccat_tenants_json(ap_rsm_store(n->rsm), &arr);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    /* Everyone sees the tenants they hold a grant on; operators see all. */
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(arr, i, t)
    {
        if (ap_authz_any_tenant(c, json_string_value(json_object_get(t, "name")))) {
            json_array_append(out, t);
        }
    }
    json_decref(arr);
    ap_http_reply_json(req, 200, json_pack("{s:o}", "tenants", out));
}

static void read_tenant(void *data, struct ap_http_req *req)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = authed(n, req);
    const char *name = c != NULL ? name_param(req, "name", "tenant") : NULL;
    if (name == NULL) {
        return;
    }
    json_t *t;
    int rv = ccat_tenant_json(ap_rsm_store(n->rsm), name, &t);
    if (rv == AP_ENOTFOUND || (rv == 0 && !ap_authz_any_tenant(c, name))) {
        char msg[128];
        snprintf(msg, sizeof msg, "tenant '%s' not found", name);
        if (rv == 0) {
            json_decref(t);
        }
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return;
    }
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    ap_http_reply_json(req, 200, t);
}

static void h_tenants_list(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_rsm_http_read(n->rh, req, read_tenants, n);
}

static void h_tenant_get(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_rsm_http_read(n->rh, req, read_tenant, n);
}

static void h_tenant_delete(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (!operator_only(n, req)) {
        return;
    }
    const char *name = name_param(req, "name", "tenant");
    uint8_t *cmd;
    size_t len;
    if (name == NULL) {
        return;
    }
    int rv = ccat_encode_tenant_delete(name, &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, 200, NULL, NULL);
}

/* ---- users and grants ---- */

/* May c manage users of tenant ("" : operators only)? Answers 403 when not. */
static bool may_manage(struct ap_http_req *req, const struct ap_claims *c, const char *tenant)
{
    if (tenant == NULL || tenant[0] == '\0') {
        return ap_authn_allow(req, c, AP_ACT_OPERATE, NULL, NULL, NULL);
    }
    return ap_authn_allow(req, c, AP_ACT_TENANT_ADMIN, tenant, NULL, NULL);
}

/* Validate a grant body; fills text (compact JSON) and the parsed grant. */
static int grant_text(json_t *j, struct ap_grant *g, char **text, char *errmsg)
{
    int rv = ap_grant_from_json(j, g, errmsg);
    if (rv != 0) {
        return rv;
    }
    json_t *canon = ap_grant_to_json(g);
    *text = canon != NULL ? json_dumps(canon, JSON_COMPACT) : NULL;
    json_decref(canon);
    return *text != NULL ? 0 : AP_ENOMEM;
}

struct user_create_work {
    uv_work_t work;
    struct ctl_node *n;
    struct ap_http_req *req;
    char name[AP_NAME_MAX];
    char tenant[AP_NAME_MAX];
    char password[AP_PASSWORD_MAX_LEN + 1];
    char hash[AP_PASSWORD_HASH_SIZE];
    char *grant; /* Compact JSON or NULL. */
    int status;
};

static void user_hash(uv_work_t *w)
{
    struct user_create_work *u = w->data;
    u->status = ap_password_hash(u->password, u->hash);
    sodium_memzero(u->password, sizeof u->password);
}

static void user_propose(uv_work_t *w, int status)
{
    struct user_create_work *u = w->data;
    uint8_t *cmd;
    size_t len;
    if (status != 0 || u->status != 0) {
        ap_http_reply_err(u->req, AP_EINTERNAL, "could not hash the password");
    } else if (ccat_encode_user_create(u->name, u->tenant, u->hash, u->grant,
                                       ap_hlc_wall_realtime(NULL), &cmd, &len) != 0) {
        ap_http_reply_err(u->req, AP_ENOMEM, "could not encode the command");
    } else {
        ap_rsm_http_propose(u->n->rh, u->req, cmd, len, 201, NULL, NULL);
    }
    free(u->grant);
    ap_free(u);
}

static void h_user_create(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    static const char *const allowed[] = {"name", "tenant", "password", "grant", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    json_t *body = ap_http_req_json(req), *grant = NULL;
    const char *name = NULL, *tenant = "", *password = NULL;
    int rv;
    const struct ap_claims *c = authed(n, req);
    if (c == NULL) {
        return;
    }
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL,
                          "a JSON body {\"name\",\"tenant\",\"password\"} is required");
        return;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "name", true, AP_NAME_MAX - 1, &name, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "tenant", false, AP_NAME_MAX - 1, &tenant, errmsg)) !=
            0 ||
        (rv = ap_http_json_get_str(body, "password", true, AP_PASSWORD_MAX_LEN, &password,
                                   errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "grant", false, &grant, errmsg)) != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!ap_token_name_valid(name)) {
        ap_http_reply_err(req, AP_EINVAL, "field 'name': user names are DNS labels");
        return;
    }
    if (tenant[0] != '\0' && !ap_token_name_valid(tenant)) {
        ap_http_reply_err(req, AP_EINVAL, "field 'tenant': must be a tenant name");
        return;
    }
    if (strlen(password) < AP_PASSWORD_MIN_LEN) {
        ap_http_reply_err(req, AP_EINVAL, "field 'password': at least 8 characters");
        return;
    }
    if (!may_manage(req, c, tenant)) {
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req); /* The leader salts and hashes. */
        return;
    }
    struct user_create_work *u = ap_calloc(1, sizeof *u);
    if (u == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    if (grant != NULL) {
        struct ap_grant g;
        rv = grant_text(grant, &g, &u->grant, errmsg);
        if (rv == 0 && !may_manage(req, c, g.role == AP_ROLE_OPERATOR ? "" : g.tenant)) {
            free(u->grant);
            ap_free(u);
            return;
        }
        if (rv != 0) {
            ap_free(u);
            ap_http_reply_err(req, rv, errmsg);
            return;
        }
    }
    u->n = n;
    u->req = req;
    ap_strlcpy(u->name, name, sizeof u->name);
    ap_strlcpy(u->tenant, tenant, sizeof u->tenant);
    ap_strlcpy(u->password, password, sizeof u->password);
    u->work.data = u;
    if (uv_queue_work(n->loop, &u->work, user_hash, user_propose) != 0) {
        sodium_memzero(u->password, sizeof u->password);
        free(u->grant);
        ap_free(u);
        ap_http_reply_err(req, AP_EINTERNAL, "could not schedule the password hash");
    }
}

static void read_users(void *data, struct ap_http_req *req)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = authed(n, req);
    if (c == NULL) {
        return;
    }
    const char *tenant = ap_http_req_query(req, "tenant");
    json_t *arr;
    int rv = ccat_users_json(ap_rsm_store(n->rsm), tenant, &arr);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    json_t *out = json_array();
    size_t i;
    json_t *u;
    json_array_foreach(arr, i, u)
    {
        const char *t = json_string_value(json_object_get(u, "tenant"));
        struct ap_target tg = {.tenant = t};
        bool visible = ap_authz_is_operator(c) ||
                       (t != NULL && t[0] != '\0' &&
                        ap_authz_check(c, AP_ACT_TENANT_ADMIN, &tg, NULL) == 0) ||
                       strcmp(json_string_value(json_object_get(u, "name")), c->user) == 0;
        if (visible) {
            json_array_append(out, u);
        }
    }
    json_decref(arr);
    ap_http_reply_json(req, 200, json_pack("{s:o}", "users", out));
}

static void h_users_list(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_rsm_http_read(n->rh, req, read_users, n);
}

static void read_user(void *data, struct ap_http_req *req)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = authed(n, req);
    const char *name = c != NULL ? name_param(req, "name", "user") : NULL;
    if (name == NULL) {
        return;
    }
    json_t *u;
    int rv = ccat_user_json(ap_rsm_store(n->rsm), name, &u);
    if (rv == 0 && strcmp(name, c->user) != 0 &&
        !may_manage(req, c, json_string_value(json_object_get(u, "tenant")))) {
        json_decref(u);
        return;
    }
    if (rv != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "user '%s' not found", name);
        ap_http_reply_err(req, rv, rv == AP_ENOTFOUND ? msg : "could not read the catalog");
        return;
    }
    ap_http_reply_json(req, 200, u);
}

static void h_user_get(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_rsm_http_read(n->rh, req, read_user, n);
}

/* The target user's tenant, for the permission check of a change to it; answers 404. */
static bool user_tenant(struct ctl_node *n, struct ap_http_req *req, const char *name,
                        char *tenant, size_t size)
{
    json_t *u;
    if (ccat_user_json(ap_rsm_store(n->rsm), name, &u) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "user '%s' not found", name);
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return false;
    }
    ap_strlcpy(tenant, json_string_value(json_object_get(u, "tenant")), size);
    json_decref(u);
    return true;
}

static void h_user_delete(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req); /* The leader's copy of the user decides. */
        return;
    }
    const struct ap_claims *c = authed(n, req);
    const char *name = c != NULL ? name_param(req, "name", "user") : NULL;
    char tenant[AP_NAME_MAX];
    uint8_t *cmd;
    size_t len;
    if (name == NULL || !user_tenant(n, req, name, tenant, sizeof tenant) ||
        !may_manage(req, c, tenant)) {
        return;
    }
    int rv = ccat_encode_user_delete(name, &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, 200, NULL, NULL);
}

static void h_grant_add(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req); /* The leader's copy of the user decides. */
        return;
    }
    const struct ap_claims *c = authed(n, req);
    const char *name = c != NULL ? name_param(req, "name", "user") : NULL;
    char tenant[AP_NAME_MAX], errmsg[AP_ERRMSG_SIZE];
    if (name == NULL || !user_tenant(n, req, name, tenant, sizeof tenant)) {
        return;
    }
    json_t *body = ap_http_req_json(req);
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL,
                          "a JSON body {\"role\",\"tenant\",\"scope\"} is required");
        return;
    }
    struct ap_grant g;
    char *text = NULL;
    int rv = grant_text(body, &g, &text, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!may_manage(req, c, g.role == AP_ROLE_OPERATOR ? "" : g.tenant)) {
        free(text);
        return;
    }
    uint8_t *cmd;
    size_t len;
    rv = ccat_encode_grant_add(name, text, &cmd, &len);
    free(text);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, 201, NULL, NULL);
}

static void h_grant_remove(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        ap_rsm_http_forward(n->rh, req); /* The leader's copy of the user decides. */
        return;
    }
    const struct ap_claims *c = authed(n, req);
    const char *name = c != NULL ? name_param(req, "name", "user") : NULL;
    char tenant[AP_NAME_MAX];
    if (name == NULL || !user_tenant(n, req, name, tenant, sizeof tenant)) {
        return;
    }
    const char *ids = ap_http_req_param(req, "id");
    char *end;
    long long id = ids[0] >= '1' && ids[0] <= '9' ? strtoll(ids, &end, 10) : 0;
    if (id <= 0 || *end != '\0') {
        ap_http_reply_err(req, AP_ENOTFOUND, "grant ids are positive integers");
        return;
    }
    /* Granted within the user's tenant: its admins (or operators) may revoke. */
    if (!may_manage(req, c, tenant)) {
        return;
    }
    uint8_t *cmd;
    size_t len;
    int rv = ccat_encode_grant_remove(name, id, &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, 200, NULL, NULL);
}

/* ---- regions ---- */

static void read_regions(void *data, struct ap_http_req *req)
{
    struct ctl_node *n = data;
    if (authed(n, req) == NULL) {
        return;
    }
    json_t *arr;
    int rv = ccat_regions_json(ap_rsm_store(n->rsm), &arr);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    size_t i;
    json_t *r;
    json_array_foreach(arr, i, r)
    {
        const char *name = json_string_value(json_object_get(r, "name"));
        json_object_set_new(r, "link",
                            json_string(n->link != NULL && regionlink__connected(n->link, name)
                                            ? "connected"
                                            : "disconnected"));
    }
    ap_http_reply_json(req, 200, json_pack("{s:o}", "regions", arr));
}

static void h_regions_list(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    ap_rsm_http_read(n->rh, req, read_regions, n);
}

static void h_region_delete(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (!operator_only(n, req)) {
        return;
    }
    const char *name = name_param(req, "name", "region");
    uint8_t *cmd;
    size_t len;
    if (name == NULL) {
        return;
    }
    int rv = ccat_encode_region_delete(name, &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    ap_rsm_http_propose(n->rh, req, cmd, len, 200, NULL, NULL);
}

int api__register(struct ctl_node *n)
{
    static const struct {
        const char *method;
        const char *pattern;
        ap_http_handler h;
    } routes[] = {
        {"GET", "/v1/health", h_health},
        {"GET", "/metrics", h_metrics},
        {"POST", "/v1/tokens", h_token_create},
        {"POST", "/v1/tenants", h_tenant_create},
        {"GET", "/v1/tenants", h_tenants_list},
        {"GET", "/v1/tenants/{name}", h_tenant_get},
        {"DELETE", "/v1/tenants/{name}", h_tenant_delete},
        {"PUT", "/v1/quotas/{tenant}", h_quota_set},
        {"POST", "/v1/users", h_user_create},
        {"GET", "/v1/users", h_users_list},
        {"GET", "/v1/users/{name}", h_user_get},
        {"DELETE", "/v1/users/{name}", h_user_delete},
        {"POST", "/v1/users/{name}/grants", h_grant_add},
        {"DELETE", "/v1/users/{name}/grants/{id}", h_grant_remove},
        {"GET", "/v1/regions", h_regions_list},
        {"DELETE", "/v1/regions/{name}", h_region_delete},
    };
    int rv = ap_rsm_http_route_cluster(n->rh, n->http, cluster_guard, n);
    for (size_t i = 0; rv == 0 && i < AP_ARRAY_LEN(routes); i++) {
        rv = ap_http_route(n->http, routes[i].method, routes[i].pattern, routes[i].h, n);
    }
    return rv;
}
