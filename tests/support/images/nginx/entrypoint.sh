#!/bin/sh
# The template step of the official nginx image's entrypoint (20-envsubst-on-templates.sh):
# every /etc/nginx/templates/X.template becomes $NGINX_ENVSUBST_OUTPUT_DIR/X, with only the
# environment variables matching $NGINX_ENVSUBST_FILTER substituted.
set -eu
template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null))
if [ -d "$template_dir" ]; then
  for template in "$template_dir"/*"$suffix"; do
    [ -f "$template" ] || continue
    name=$(basename "$template" "$suffix")
    echo "$0: rendering $template to $output_dir/$name" >&2
    envsubst "$defined_envs" < "$template" > "$output_dir/$name"
  done
fi
exec "$@"
