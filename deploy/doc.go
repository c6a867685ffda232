// Package deploy holds the Docker Compose deployment; its tests check the compose file.
package deploy
