# The image for channel web/production on provider aws-prod in us-east-1, from imm, the way
# HCP Packer's hcp-packer-artifact data source answers it: one lookup, the provider's own id.
#
#   terraform init && terraform plan
#
# The program runs on the machine that runs Terraform, next to immd (it calls immctl over
# immd's unix socket; IMM_SOCKET or query.socket picks another socket). Reading needs only
# membership of group imm, not imm-admin.

terraform {
  required_providers {
    external = {
      source  = "hashicorp/external"
      version = ">= 2.3"
    }
  }
}

variable "channel" {
  type    = string
  default = "web/production"
}

data "external" "web_image" {
  program = ["python3", "${path.module}/imm_image.py"]
  query = {
    channel  = var.channel
    provider = "aws-prod"
    region   = "us-east-1"
  }
}

output "image_id" {
  value = data.external.web_image.result.image_id # e.g. ami-0fedcba9876543210
}

output "image" {
  value = data.external.web_image.result.image # e.g. web@1.4.2
}

# resource "aws_instance" "web" {
#   ami           = data.external.web_image.result.image_id
#   instance_type = "t3.small"
#   tags          = { "imm:digest" = data.external.web_image.result.digest }
# }
