#!/usr/bin/env bash
# Helpers sourced by the launch scripts.

# Prints its arguments as one command line that a shell reads back as the same words: plain words
# as they are, others in single quotes.
print_command() {
  local arg words=()
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      words+=("${arg}")
    else
      words+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}
