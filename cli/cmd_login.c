/* cmd_login: `archipel login`: get a token and keep it, with the endpoint, in the config file. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdio.h>
#include <string.h>

/* Longest password read, terminator included. */
#define PASSWORD_SIZE 1024

static int run_login(struct cli *c, const struct cli_args *a)
{
    const char *user = cli__get(a, "user");
    const char *given = cli__get(a, "password");
    char password[PASSWORD_SIZE], path[4096], errmsg[AP_ERRMSG_SIZE];
    struct client *cl;
    int rv;
    if (user == NULL) {
        return cli__usage_error(c, "'login' needs --user U; run 'archipel login --help'");
    }
    if (given != NULL && cli__has(a, "password-stdin")) {
        return cli__usage_error(c, "give --password or --password-stdin, not both");
    }
    if ((rv = cli__check_name(c, "--user", user)) != CLI_OK) {
        return rv;
    }
    /* An old token may have expired; logging in must not depend on it. */
    c->no_token = true;
    if ((rv = cli__client(c, &cl)) != CLI_OK) {
        return rv;
    }
    if (cli_config_path(path, sizeof path) != 0) {
        return cli__usage_error(c, "nowhere to keep the token: set HOME or XDG_CONFIG_HOME");
    }
    if (given == NULL) {
        char prompt[CLIENT_ENDPOINT_SIZE + 128];
        snprintf(prompt, sizeof prompt, "password for %s at %s: ", user, c->endpoint);
        rv =
            cli__read_password(c, cli__has(a, "password-stdin"), prompt, password, sizeof password);
        if (rv != CLI_OK) {
            return rv;
        }
        given = password;
    }
    json_t *body = json_pack("{s:s, s:s}", "user", user, "password", given);
    memset(password, 0, sizeof password);
    if (body == NULL) {
        return cli__usage_error(c, "the password is not valid UTF-8");
    }
    struct cli_reply r;
    rv = cli__call(c, "POST", "/v1/tokens", body, 0, &r);
    json_decref(body);
    if (rv != CLI_OK) {
        return rv;
    }
    const char *token = json_string_value(json_object_get(r.json, "token"));
    const char *until = json_string_value(json_object_get(r.json, "expires_at"));
    if (token == NULL || !client__token_ok(token)) {
        cli__reply_free(&r);
        return cli__fail(c, "%s/v1/tokens answered no usable \"token\"", c->endpoint);
    }
    if (cli_config_write(path, c->endpoint, token, errmsg) != 0) {
        cli__reply_free(&r);
        return cli__fail(c, "could not save the token: %s", errmsg);
    }
    if (c->format == CLI_FORMAT_JSON) {
        rv = output__json(c->out, r.json) == 0 ? CLI_OK : cli__nomem(c);
    } else {
        fprintf(c->out, "logged in as %s until %s\n", user, until != NULL ? until : "-");
    }
    cli__reply_free(&r);
    return rv;
}

static const struct cli_opt login_opts[] = {
    {"user", CLI_OPT_VALUE, "U", "user name (required)"},
    {"password", CLI_OPT_VALUE, "P",
     "the password (visible to other local users: prefer the "
     "prompt or --password-stdin)"},
    {"password-stdin", CLI_OPT_BOOL, NULL, "read the password from stdin's first line"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_cmd login_cmds[] = {
    {NULL, "--user U [--password P | --password-stdin]",
     "Log in: get a token for U and keep it, with the endpoint, in the config file.", login_opts, 0,
     0, false, run_login},
};

const struct cli_noun cmd_login__noun = {
    "login",
    "Log in and keep the token and endpoint in the config file.",
    login_cmds,
    AP_ARRAY_LEN(login_cmds),
};
