/* node: one archipel-controller process: raft group member, HTTP API, region links, metrics,
 * and the leader's duties (signing key, bootstrap admin). */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/log.h"
#include "ap/token.h"
#include "catalog.h"
#include "regionlink.h"

#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#define TICK_MS 250

static int authn_key(void *data, uint8_t pk[AP_TOKEN_PK_SIZE])
{
    struct ctl_node *n = data;
    return ccat_key(ap_rsm_store(n->rsm), pk, NULL);
}

static int authn_user(void *data, const char *user, uint64_t *min_gen, bool *deleted)
{
    struct ctl_node *n = data;
    struct ap_store *st = ap_rsm_store(n->rsm);
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, "SELECT gen, deleted FROM users WHERE name=?1", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, user);
    rv = ap_store_step(st, s);
    if (rv == AP_STORE_ROW) {
        *min_gen = (uint64_t)sqlite3_column_int64(s, 0);
        *deleted = sqlite3_column_int(s, 1) != 0;
        rv = 0;
    } else {
        rv = AP_ENOTFOUND;
    }
    ap_store_reset(s);
    return rv;
}

/* ---- leader duties ---- */

static void duty_done(void *data, struct ap_rsm_result *res)
{
    struct ctl_node *n = data;
    n->bootstrap_pending = false;
    if (res->status != 0 && res->status != AP_EEXIST) {
        AP_LOG(AP_LOG_WARN, "bootstrap_failed err=\"%s\"", res->message);
    }
}

static int read_password_file(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return AP_EIO;
    }
    size_t len = fread(out, 1, size - 1, f);
    fclose(f);
    out[len] = '\0';
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r')) {
        out[--len] = '\0';
    }
    return 0;
}

static void propose_duty(struct ctl_node *n, uint8_t *cmd, size_t len)
{
    n->bootstrap_pending = true;
    int rv = ap_rsm_propose(n->rsm, cmd, len, duty_done, n);
    ap_free(cmd);
    if (rv != 0) {
        n->bootstrap_pending = false;
    }
}

static void bootstrap_admin(struct ctl_node *n)
{
    uint64_t gen;
    bool deleted;
    if (n->cfg.admin_password_file[0] == '\0' || authn_user(n, "admin", &gen, &deleted) == 0) {
        return;
    }
    char password[AP_PASSWORD_MAX_LEN + 2], hash[AP_PASSWORD_HASH_SIZE];
    if (read_password_file(n->cfg.admin_password_file, password, sizeof password) != 0 ||
        ap_password_hash(password, hash) != 0) {
        sodium_memzero(password, sizeof password);
        AP_LOG(AP_LOG_ERROR, "bootstrap_admin_failed file=%s err=\"unreadable or invalid\"",
               n->cfg.admin_password_file);
        n->cfg.admin_password_file[0] = '\0';
        return;
    }
    sodium_memzero(password, sizeof password);
    struct ap_grant g = {.role = AP_ROLE_OPERATOR};
    json_t *gj = ap_grant_to_json(&g);
    char *text = gj != NULL ? json_dumps(gj, JSON_COMPACT) : NULL;
    json_decref(gj);
    uint8_t *cmd;
    size_t len;
    if (text != NULL && ccat_encode_user_create("admin", "", hash, text,
                                                ap_hlc_wall_realtime(NULL), &cmd, &len) == 0) {
        AP_LOG(AP_LOG_INFO, "bootstrap_admin user=admin role=operator");
        propose_duty(n, cmd, len);
    }
    free(text);
}

static void on_tick(uv_timer_t *t)
{
    struct ctl_node *n = t->data;
    if (n->stopping || n->bootstrap_pending || ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        return;
    }
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    if (ccat_key(ap_rsm_store(n->rsm), pk, NULL) == AP_ENOTFOUND) {
        uint8_t *cmd;
        size_t len;
        if (ap_token_keygen(pk, sk) == 0 && ccat_encode_key_init(pk, sk, &cmd, &len) == 0) {
            AP_LOG(AP_LOG_INFO, "signing_key_created");
            propose_duty(n, cmd, len);
        }
        sodium_memzero(sk, sizeof sk);
        return;
    }
    bootstrap_admin(n);
}

/* ---- start / stop ---- */

int ctl_node_start(struct ctl_node **out, uv_loop_t *loop, const struct ctl_config *cfg,
                   char *errmsg)
{
    int rv;
    struct ctl_node *n = ap_calloc(1, sizeof *n);
    if (n == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    n->loop = loop;
    n->cfg = *cfg;
    snprintf(n->http_addr, sizeof n->http_addr, "%s:%u", cfg->ip, cfg->http_port);
    snprintf(n->raft_addr, sizeof n->raft_addr, "%s:%u", cfg->ip, cfg->raft_port);
    rv = ap_metrics_new(&n->metrics);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "metrics: %s", ap_strerror(rv));
        ap_free(n);
        return rv;
    }
    const char *labels = "tier=\"controller\"";
    n->m_forwarded = ap_metrics_counter(n->metrics, "archipel_http_forwarded_total",
                                        "Requests a follower forwarded to its leader.", labels);
    n->m_tokens = ap_metrics_counter(n->metrics, "archipel_tokens_issued_total",
                                     "Tokens issued by POST /v1/tokens.", labels);
    n->m_fanouts = ap_metrics_counter(n->metrics, "archipel_fanouts_total",
                                      "Requests fanned out to the regions.", labels);
    struct ap_rsm_config rc = {
        .id = cfg->id,
        .dir = cfg->dir,
        .raft_addr = n->raft_addr,
        .http_addr = n->http_addr,
        .peers = cfg->peers,
        .n_peers = cfg->n_peers,
        .join = cfg->join,
        .election_timeout_ms = cfg->election_timeout_ms,
        .snapshot_threshold = cfg->snapshot_threshold,
        .migrations = ccat_migrations,
        .n_migrations = ccat_n_migrations,
        .apply = ccat_apply,
        .apply_data = n,
        .metrics = n->metrics,
        .metric_labels = labels,
    };
    rv = ap_rsm_new(&n->rsm, loop, &rc, errmsg);
    if (rv != 0) {
        return rv; /* The process exits on a start failure. */
    }
    static const char *const query_keys[] = {"tenant", NULL};
    struct ap_rsm_http_config hc = {
        .loop = loop,
        .rsm = n->rsm,
        .id = cfg->id,
        .ip = cfg->ip,
        .group_key = "controller",
        .group_name = "global",
        .query_keys = query_keys,
        .m_forwarded = n->m_forwarded,
    };
    struct ap_authn_source src = {
        .key = authn_key, .user = authn_user, .data = n, .lookup_ttl_ms = 1000};
    if ((rv = ap_rsm_http_new(&n->rh, &hc)) != 0 ||
        (rv = ap_authn_new(&n->authn, &src, 64)) != 0) {
        ap_errmsg_set(errmsg, "http: %s", ap_strerror(rv));
        return rv;
    }
    rv = ap_http_server_new(&n->http, loop, cfg->ip, cfg->http_port, 0, errmsg);
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "http %s", n->http_addr);
        return rv;
    }
    if ((rv = api__register(n)) != 0 || (rv = fanout__register(n)) != 0) {
        ap_errmsg_set(errmsg, "routes: %s", ap_http_server_errmsg(n->http));
        return rv;
    }
    rv = ap_rsm_start(n->rsm, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (cfg->link_port != 0) {
        rv = regionlink__start(&n->link, n, cfg->link_port, errmsg);
        if (rv != 0) {
            return rv;
        }
    }
    uv_timer_init(loop, &n->tick);
    n->tick.data = n;
    uv_timer_start(&n->tick, on_tick, TICK_MS, TICK_MS);
    AP_LOG(AP_LOG_INFO, "controller_started node=%llu http=%s raft=%s link=%s:%u dir=%s",
           (unsigned long long)cfg->id, n->http_addr, n->raft_addr, cfg->ip, cfg->link_port,
           cfg->dir);
    *out = n;
    return 0;
}

static void rsm_closed(void *data)
{
    struct ctl_node *n = data;
    void (*cb)(void *) = n->stop_cb;
    void *cb_data = n->stop_data;
    ap_rsm_http_free(n->rh);
    ap_authn_free(n->authn);
    ap_metrics_free(n->metrics);
    ap_free(n);
    if (cb != NULL) {
        cb(cb_data);
    }
}

static void link_closed(void *data)
{
    struct ctl_node *n = data;
    n->link = NULL;
    ap_rsm_close(n->rsm, rsm_closed, n);
}

static void tick_closed(uv_handle_t *h)
{
    struct ctl_node *n = h->data;
    if (n->link != NULL) {
        regionlink__stop(n->link, link_closed, n);
    } else {
        link_closed(n);
    }
}

static void http_closed(void *data)
{
    struct ctl_node *n = data;
    uv_close((uv_handle_t *)&n->tick, tick_closed);
}

void ctl_node_stop(struct ctl_node *n, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!n->stopping);
    n->stopping = true;
    n->stop_cb = cb;
    n->stop_data = data;
    AP_LOG(AP_LOG_INFO, "controller_stopping node=%llu", (unsigned long long)n->cfg.id);
    uv_timer_stop(&n->tick);
    ap_http_server_close(n->http, http_closed, n);
}
