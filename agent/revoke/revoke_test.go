package revoke
